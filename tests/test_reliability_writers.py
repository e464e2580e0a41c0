"""Writers that replaced data or did the wrong thing silently (hostile test run): quantize onto its
source given as an alias or a ``~`` path, annotate / bench score / toy train / experiment
protection replacing existing files without ``--overwrite``, protect reading traces past the
model's context."""

from __future__ import annotations

import shutil

from cli_run import run_cli as _rc

from lrm_interp.cli.main import main


def _snapshot(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _toy_copy(dst):
    from lrm_interp.toy import toy_model_dir

    shutil.copytree(toy_model_dir(), dst)
    return dst


# F5/F17 -------------------------------------------------------------------------------------------


def test_quantize_refuses_the_toy_alias_folder_as_out_even_with_overwrite(tmp_path, monkeypatch, capsys):
    """``quantize --model toy --out <the toy model's folder> --overwrite`` replaced the shipped
    model: the source was checked as the path ``toy``. Run on a copy of the toy folder."""
    import lrm_interp.toy as toy

    src = _toy_copy(tmp_path / "toy_reasoner")
    monkeypatch.setattr(toy, "toy_model_dir", lambda: src)
    before = _snapshot(src)
    argv = ["quantize", "--model", "toy", "--bits", "2", "--quiet", "--overwrite", "--out", str(src)]
    assert _rc(argv) == 2
    assert "overlaps its source" in capsys.readouterr().err
    assert _snapshot(src) == before


def test_quantize_refuses_a_home_relative_model_as_out(tmp_path, monkeypatch, capsys):
    """``--model '~/mm' --out /abs/.../mm --overwrite``: ``Path('~/mm')`` does not exist, so the
    source was not protected."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    src = _toy_copy(home / "mm")
    # an earlier quantize result (which --overwrite may replace) used as the source model
    (src / "lrm_interp_quantization.json").write_text("{}")
    before = _snapshot(src)
    for out in (src, src / "sub"):
        argv = ["quantize", "--model", "~/mm", "--bits", "2", "--quiet", "--overwrite", "--out", str(out)]
        assert _rc(argv) == 2
        assert "overlaps its source" in capsys.readouterr().err
    assert _snapshot(src) == before


# F8 -----------------------------------------------------------------------------------------------


def _outputs_file(tmp_path):
    import json

    src = tmp_path / "outputs.jsonl"
    rec = {
        "id": "t0",
        "prompt": "What is 2 + 3?",
        "response": "Let me add 2 and 3. That gives 5. Wait, let me check: 2 + 3 = 5. So the answer is 5.",
    }
    src.write_text(json.dumps(rec) + "\n")
    return src


def test_annotate_refuses_an_existing_out_or_report_without_overwrite(tmp_path, capsys):
    """A successful ``annotate --out F`` replaced an existing F (and ``--report R``) silently."""
    src = _outputs_file(tmp_path)
    base = ["annotate", "--annotator", "rules", "--data", str(src), "--quiet"]
    out, rep = tmp_path / "mine.jsonl", tmp_path / "mine.json"
    out.write_text("my own file\n")
    assert _rc(base + ["--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "my own file\n"
    rep.write_text("{}")
    assert _rc(base + ["--out", str(tmp_path / "new.jsonl"), "--report", str(rep)]) == 2
    assert "--report" in capsys.readouterr().err
    assert rep.read_text() == "{}" and not (tmp_path / "new.jsonl").exists()
    assert _rc(base + ["--out", str(out), "--report", str(rep), "--overwrite"]) == 0
    assert out.read_text() != "my own file\n" and rep.read_text() != "{}"


def test_annotate_train_refuses_an_existing_out_without_overwrite(tmp_path, capsys):
    from pathlib import Path

    gold = Path(__file__).parent / "data" / "r1_style"
    out = tmp_path / "a.safetensors"
    out.write_bytes(b"mine")
    argv = ["annotate", "train", "--data", str(gold), "--folds", "0", "--steps", "2", "--quiet", "--out", str(out)]
    assert _rc(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert _rc(argv + ["--overwrite"]) == 0
    assert out.read_bytes() != b"mine"


# F9 -----------------------------------------------------------------------------------------------


def _bench_outputs(tmp_path):

    root = tmp_path / "runs" / "m"  # another generator's outputs (a bench run folder keeps generations.jsonl)
    root.mkdir(parents=True)
    d = root / "outputs" / "musique"
    d.mkdir(parents=True)
    for j, text in enumerate(["</think> Ada Marsh", "</think> UK", "</think> 1931"]):
        (d / f"{j}.txt").write_text(text)
    return tmp_path / "runs"


def test_bench_score_refuses_an_out_holding_its_files_without_overwrite(tmp_path, capsys):
    """``bench score --out D`` replaced D's scores.csv (D an attribution folder, say) silently.
    The default ``<outputs>/scores`` is refreshed only when an earlier score wrote it."""
    from pathlib import Path

    data = Path(__file__).parent / "data" / "bench"
    runs = _bench_outputs(tmp_path)
    base = [
        "bench",
        "score",
        "--outputs",
        str(runs),
        "--tasks",
        "musique",
        "--task-data",
        str(data),
        "--quiet",
        "--no-plots",
    ]
    attr = tmp_path / "attr"
    attr.mkdir()
    (attr / "scores.csv").write_text("behavior,site,score\n")
    (attr / "attribution.json").write_text("{}")
    # an attribution result folder is another command's result: refused, --overwrite or not (H8-OW1)
    for extra in ([], ["--overwrite"]):
        assert _rc(base + ["--out", str(attr), *extra]) == 2
        err = capsys.readouterr().err
        assert "another command's result" in err and "not even with --overwrite" in err
        assert (attr / "scores.csv").read_text() == "behavior,site,score\n" and len(list(attr.iterdir())) == 2
    # a folder holding only a file named like bench score's: refused without --overwrite, replaced with it
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "scores.csv").write_text("behavior,site,score\n")
    assert _rc(base + ["--out", str(loose)]) == 2
    err = capsys.readouterr().err
    assert "scores.csv" in err and "--overwrite" in err
    assert (loose / "scores.csv").read_text() == "behavior,site,score\n"
    assert _rc(base + ["--out", str(loose), "--overwrite"]) == 0
    assert (loose / "scores.csv").read_text() != "behavior,site,score\n"
    capsys.readouterr()
    # the default folder: written by bench score, refreshed by a rerun; the user's own file there is kept
    assert _rc(base) == 0 and _rc(base) == 0
    assert (runs / "scores" / "tables.md").is_file()
    mine = tmp_path / "runs2"
    shutil.copytree(runs, mine)
    shutil.rmtree(mine / "scores")
    (mine / "scores").mkdir()
    (mine / "scores" / "accuracy.csv").write_text("mine\n")
    base2 = [str(mine) if x == str(runs) else x for x in base]
    assert _rc(base2) == 2
    assert (mine / "scores" / "accuracy.csv").read_text() == "mine\n"


# F14 ----------------------------------------------------------------------------------------------


def test_protect_refuses_traces_past_the_models_context(tmp_path, capsys):
    """``protect`` scored traces past the model's context silently (or failed with "index out of
    range in self"); it refuses them now, as ``attribute`` does by default, naming them."""
    import json

    traces = tmp_path / "t.jsonl"
    assert main(["toy", "traces", "--gold", "--per-family", "1", "--out", str(traces)]) == 0
    attr = tmp_path / "a"
    assert main(["attribute", "--model", "toy", "--data", str(traces), "--out", str(attr), "--quiet"]) == 0
    short = _toy_copy(tmp_path / "short")
    cfg = json.loads((short / "config.json").read_text())
    cfg["max_position_embeddings"] = 16
    (short / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    out = tmp_path / "m.safetensors"
    argv = ["protect", "--scores", str(attr), "--model", str(short), "--data", str(traces), "--out", str(out)]
    assert _rc(argv) == 2
    err = capsys.readouterr().err
    first = json.loads(traces.read_text().splitlines()[0])["id"]
    assert "longer than the model's context of 16 positions" in err and first in err, err
    assert not out.exists()
    assert _rc([str(x) if x != str(short) else "toy" for x in argv]) == 0  # the same traces fit the toy's context


# F7 -----------------------------------------------------------------------------------------------


def test_toy_train_refuses_an_existing_model_folder_without_overwrite(tmp_path, capsys):
    """``toy train --out EXISTING`` replaced a trained model without a flag (after the training)."""
    src = _toy_copy(tmp_path / "mine")
    before = _snapshot(src)
    argv = ["toy", "train", "--out", str(src), "--steps", "1", "--stop-at", "0", "--anneal-steps", "0"]
    argv += ["--batch-size", "2", "--eval-per-family", "1", "--workers", "0", "--device", "cpu"]
    argv += ["--hidden", "8", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "8"]
    assert _rc(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _snapshot(src) == before
    assert _rc(argv + ["--overwrite"]) == 0
    import json

    assert json.loads((src / "config.json").read_text())["hidden_size"] == 8
    assert "heldout_accuracy" in json.loads((src / "training_log.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert _rc([other.as_posix() if x == str(src) else x for x in argv] + ["--overwrite"]) == 2
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1


# F16 ----------------------------------------------------------------------------------------------


def test_experiment_protection_refuses_a_folder_of_the_users_own_files(tmp_path, capsys):
    """``experiment protection --out UF`` replaced the user's own table.md / table.csv (only a
    folder with rows.jsonl and no settings.json was refused)."""
    uf = tmp_path / "uf"
    uf.mkdir()
    (uf / "table.md").write_text("my table\n")
    (uf / "table.csv").write_text("a,b\n")
    before = _snapshot(uf)
    assert _rc(["experiment", "protection", "--per-family", "1", "--out", str(uf), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not an experiment folder" in err and "table.md" in err
    assert _snapshot(uf) == before
