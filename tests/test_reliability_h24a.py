"""Hostile probe H24, data loss (docs/reliability.md): a folder writer never replaces a file
(H24-QFILE: ``quantize --overwrite --out traces.jsonl`` replaced the traces with a model folder,
``faithfulness --overwrite --out FILE`` computed everything, then failed with a bare "File exists"),
and ``quickstart --overwrite`` never replaces a user's ``lrm-interp study`` (H24-QSOVER)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_run import run_cli as _rc

from lrm_interp._io import check_out_dir
from lrm_interp.experiments.quickstart import quickstart_study, quickstart_traces
from lrm_interp.experiments.study import run_study
from lrm_interp.testing import byte_tokenizer, tiny_model

#: what a folder writer says of a file named as its --out (H24-QFILE)
FILE_OUT = "--out names a folder to write the result into (a file is never replaced by one, not even with --overwrite)"


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def traces_file(tmp_path) -> Path:
    p = tmp_path / "tr.jsonl"
    quickstart_traces(3).save_jsonl(p)
    return p


def test_quantize_never_replaces_a_file_or_its_link_with_a_model_folder(tmp_path, traces_file, capsys):
    """H24-QFILE: the traces (named, or through a link) and a plain file stay; the refusal says what
    the file holds and no longer advises --overwrite; the Python check refuses it alike."""
    link = tmp_path / "lk"
    link.symlink_to(traces_file.name)
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    data = traces_file.read_bytes()
    for out, shown in (
        (traces_file, f"--out {traces_file}: a file (reasoning traces (JSON lines)); "),
        (link, f"--out {link}: a link to {traces_file}, a file (reasoning traces (JSON lines)); "),
        (plain, f"--out {plain}: a file; "),
    ):
        for extra in ([], ["--overwrite"]):
            assert _rc(["quantize", "--model", "toy", "--bits", 3, "--out", out, *extra, "--quiet"]) == 2
            err = capsys.readouterr().err
            assert shown + FILE_OUT in err and "pass --overwrite" not in err
    assert traces_file.is_file() and traces_file.read_bytes() == data
    assert link.is_symlink() and plain.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lk", "notes.txt", "tr.jsonl"]
    with pytest.raises(ValueError, match=r"a file \(reasoning traces \(JSON lines\)\)"):
        check_out_dir(traces_file, overwrite=True)


def test_faithfulness_overwrite_refuses_a_file_out_before_any_work(tmp_path, traces_file, capsys):
    """H24-FAITHFILE (the same rule): refused up front, not after the work with "File exists"."""
    out = tmp_path / "f.jsonl"
    out.write_bytes(traces_file.read_bytes())
    rc = _rc(["faithfulness", "--model", "toy", "--data", traces_file, "--out", out, "--overwrite"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"--out {out}: a file (reasoning traces (JSON lines)); " + FILE_OUT in err
    assert out.read_bytes() == traces_file.read_bytes()


def test_quickstart_never_replaces_a_users_study(tmp_path, traces_file, capsys):
    """H24-QSOVER: a study of the user's model and data is refused by the quickstart, --overwrite or
    not, naming its model and data; nothing in it changes. A quickstart's own folder is still
    started over with --overwrite."""
    out = tmp_path / "S1"
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    run_study(model, traces_file, out, tokenizer=tok, model_ref="my_model", bits=3, resamples=50, progress=False)
    before = _snapshot(out)
    msg = (
        f"{out} holds a study made by 'lrm-interp study' (model my_model, data {traces_file}), not a quickstart: "
        "overwrite=True (--overwrite) replaces only a quickstart's folder; choose another out folder (--out)"
    )
    for extra in ([], ["--overwrite"]):
        assert _rc(["quickstart", "--out", out, *extra, "--tiny", "--traces", 3, "--eval", 0, "--quiet"]) == 2
        err = capsys.readouterr()
        assert msg in err.err and "quickstart on a TINY" not in err.out  # refused before the header
    with pytest.raises(ValueError) as e:
        quickstart_study(out, n_traces=3, tiny=True, n_eval=0, overwrite=True, progress=False)
    assert msg in str(e.value)
    assert _snapshot(out) == before and not (out / "tiny_model").exists()

    q = tmp_path / "Q"  # a quickstart's own folder: --overwrite starts it over, as before
    quickstart_study(q, n_traces=3, tiny=True, n_eval=0, progress=False)
    got = quickstart_study(q, n_traces=6, tiny=True, n_eval=0, overwrite=True, progress=False)
    assert got.provenance["traces"]["n"] == 6
