"""Issue 22 ("nothing lost, nothing silent"): the sixteenth hostile probe's findings left open (H17-…).

H17-TRO: a traces JSON lines file (``toy traces``, ``parse``, ``annotate``, a user's data, the input
of finished results) was replaced by another writer given ``--overwrite``: ``protect --out tr.jsonl
--overwrite`` left masks there, ``bits --gptqmodel tr.jsonl --overwrite`` a GPTQModel config (and the
reverse: ``toy traces --out <a GPTQModel config> --overwrite``). The never-replace rule of another
command's file (H10-SFR) knew files by the ``format`` they declare, which these files do not carry;
it now knows them by their shape too (``lrm_interp._io._shape_of``).

H17-SYM: a finished attribution rerun through a link to its data (``--data trlink.jsonl``) took the
link's name as its dataset name, and a later ``compare`` warned "different dataset names" for the
same traces."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from cli_run import err_line, run_cli, toy_gold

import lrm_interp as li
from lrm_interp import _io

BITS = ["bits", "--model", "toy", "--sensitivity", "none", "--budget", 3.5, "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Gold traces, an attribution of them, and the GPTQModel / llm-compressor configs of ``bits``."""
    tmp = tmp_path_factory.mktemp("h17")
    gold = toy_gold(tmp)
    a = tmp / "A"
    assert run_cli(["attribute", "--model", "toy", "--data", gold, "--out", a, "--quiet"]) == 0
    g, lc = tmp / "g.json", tmp / "l.json"
    assert run_cli([*BITS, "--out", tmp / "b.json", "--gptqmodel", g, "--llmcompressor", lc]) == 0
    return gold, a, g, lc


# ------------------------------------------------------------------ H17-TRO
def test_files_without_a_format_are_known_by_their_shape(files, tmp_path, monkeypatch):
    gold, _, g, lc = files
    assert _io.file_result(gold).family == _io.TRACES_KIND
    assert str(_io.file_result(gold)) == f"{gold} holds reasoning traces (JSON lines)"
    assert _io.file_result(g).family == _io.GPTQMODEL_DYNAMIC_KIND
    assert _io.file_result(lc).family == _io.LLMCOMPRESSOR_GROUPS_KIND
    first = gold.read_text(encoding="utf-8").splitlines()[0]
    cases = {
        "one.jsonl": (first + "\n", _io.TRACES_KIND),  # a single trace is one JSON document
        "bom.jsonl": ("\ufeff" + gold.read_text(encoding="utf-8"), _io.TRACES_KIND),
        "noresp.jsonl": ('{"id": "a", "text": "x"}\n' + first + "\n", None),  # the first line decides
        # blank lines are skipped by the readers, so by the shape too (H18-BLANK)
        "blank.jsonl": ("\n" + gold.read_text(encoding="utf-8"), _io.TRACES_KIND),
        "ws.jsonl": ("\ufeff  \t\r\n\r\n" + gold.read_text(encoding="utf-8").replace("\n", "\r\n"), _io.TRACES_KIND),
        "blank1.jsonl": ("\n\n" + first + "\n", _io.TRACES_KIND),
        "blanks.jsonl": ("\n" * 300 + first + "\n" + first.replace('"id": "', '"id": "x'), _io.TRACES_KIND),
        "onlyblank.jsonl": ("\n \n", None),
        # a "format" in a trace's metadata is a trace's key like any other (H18-FMT)
        "fmt.jsonl": (first[:-1] + ', "format": "mine/1"}\n' + first + "\n", _io.TRACES_KIND),
        "fmt1.jsonl": (first[:-1] + ', "format": "mine/1"}', _io.TRACES_KIND),
        # a single trace declaring a format of ours is still a trace (H19-FMT); other objects: the format
        "declared.json": (first[:-1] + ', "format": "lrm_interp.masks/2"}', _io.TRACES_KIND),
        "declared2.json": ('{"format": "lrm_interp.bits/2", "id": 3}', "lrm_interp.bits"),
        # blank as the reader sees it: Unicode spaces too (H19-USP)
        "nbsp.jsonl": ("\u00a0\n\u2028\u3000\n\x1c\n" + gold.read_text(encoding="utf-8"), _io.TRACES_KIND),
        "nbsp1.jsonl": ("\u00a0" * 40 + "\n" + first, _io.TRACES_KIND),
        "badutf8.jsonl": (None, None),
        "intresp.jsonl": ('{"id": "a", "response": 3}\n', None),
        "list.json": (json.dumps([json.loads(first)]), None),
        "empty.json": ("{}", None),
        "mixed.json": ('{"+:^a$": {}, "b": {}}', None),
        "groups.json": ('{"config_groups": []}', None),
        "config.jsonl": ('{"-:^a$": {}}\n{"-:^b$": {}}\n', None),  # a config is one document, never lines
    }
    for name, (text, kind) in cases.items():
        if text is None:  # invalid UTF-8 before the first trace: the reader refuses it, no traces file
            (tmp_path / name).write_bytes(b"\n\xff\xfe\n" + first.encode())
        else:
            (tmp_path / name).write_text(text, encoding="utf-8")
        held = _io.file_result(tmp_path / name)
        assert (held.family if held else None) == kind, name
    # a first line longer than the reading limit is not read
    monkeypatch.setattr(_io, "FILE_RESULT_MAX_BYTES", len(first) // 2)
    assert _io.file_result(gold) is None
    monkeypatch.setattr(_io, "FILE_RESULT_MAX_BYTES", len(first) + 2)
    assert _io.file_result(gold).family == _io.TRACES_KIND  # the file is longer, its first line is not


def test_trace_files_and_toolchain_configs_are_replaced_only_by_their_own_writers(files, tmp_path, capsys):
    gold, a, g0, l0 = files
    tr, g, lc = (tmp_path / p.name for p in (gold, g0, l0))
    for src, dst in ((gold, tr), (g0, g), (l0, lc)):
        shutil.copy(src, dst)
    before = {p: p.read_bytes() for p in (tr, g, lc)}
    protect = ["protect", "--scores", a, "--policy", "final_mlp", "--bits", 3, "--quiet"]
    traces_by = "written by 'lrm-interp toy traces', 'lrm-interp parse' or 'lrm-interp annotate'"
    cases = [
        ([*protect, "--out", tr], "--out", tr, f"holds reasoning traces (JSON lines), {traces_by}"),
        ([*BITS, "--out", tmp_path / "b1.json", "--gptqmodel", tr], "--gptqmodel", tr, "holds reasoning"),
        ([*BITS, "--out", tmp_path / "b2.json", "--llmcompressor", tr], "--llmcompressor", tr, "holds reasoning"),
        ([*BITS, "--out", tmp_path / "b3.json", "--gptqmodel", lc], "--gptqmodel", lc, "holds an llm-compressor"),
        (["toy", "traces", "--gold", "--per-family", 1, "--out", g], "--out", g, "holds a GPTQModel 'dynamic' config"),
        (["parse", "--data", gold, "--out", lc], "--out", lc, "holds an llm-compressor 'config_groups' config"),
        (["annotate", "--data", gold, "--annotator", "rules", "--out", g], "--out", g, "holds a GPTQModel"),
    ]
    for argv, flag, path, needle in cases:
        capsys.readouterr()
        assert run_cli([*argv, "--overwrite"]) == 2, argv
        line = err_line(capsys)
        assert f"{flag} {path} {needle}" in line, line
        assert "--overwrite does not replace" in line and line.endswith(f"choose another {flag}"), line
    assert {p: p.read_bytes() for p in (tr, g, lc)} == before
    assert not list(tmp_path.glob("b*.json")), "refused before any output was written"
    # without --overwrite the refusal names what the file holds and who replaces it; its own writer
    # is told to pass --overwrite
    capsys.readouterr()
    assert run_cli([*protect, "--out", tr]) == 2
    line = err_line(capsys)
    assert line.endswith(
        f"--out {tr}: the file exists and holds reasoning traces (JSON lines), which only 'lrm-interp toy traces', "
        "'lrm-interp parse' or 'lrm-interp annotate' replaces (with --overwrite); choose another path"
    ), line
    for argv, path in (
        (["toy", "traces", "--gold", "--per-family", 1, "--out", tr], tr),
        ([*BITS, "--out", tmp_path / "b5.json", "--gptqmodel", g], g),
    ):
        assert run_cli(argv) == 2
        line = err_line(capsys)
        assert line.endswith(f"{path}: the file exists; pass --overwrite to replace it, or choose another path"), line
    # the Python writers follow the same rule
    masks = li.load_masks(_masks(a, tmp_path))
    with pytest.raises(_io.OtherResultError, match="holds reasoning traces .* not replaced by protection masks"):
        li.save_masks(masks, tr, replace=True)
    with pytest.raises(_io.OtherResultError, match="GPTQModel 'dynamic' config: not replaced by reasoning traces"):
        li.load_dataset(gold).save_jsonl(g)
    assert {p: p.read_bytes() for p in (tr, g, lc)} == before
    # each writer still replaces its own kind with --overwrite
    assert run_cli(["toy", "traces", "--gold", "--per-family", 1, "--seed", 3, "--out", tr, "--overwrite"]) == 0
    assert run_cli(["parse", "--data", gold, "--out", tr, "--overwrite"]) == 0
    assert tr.read_bytes() == gold.read_bytes()
    assert run_cli([*BITS, "--out", tmp_path / "b4.json", "--gptqmodel", g, "--llmcompressor", lc, "--overwrite"]) == 0


def _masks(a, tmp_path):
    out = tmp_path / "m.safetensors"
    assert run_cli(["protect", "--scores", a, "--policy", "final_mlp", "--bits", 3, "--out", out, "--quiet"]) == 0
    return out


@pytest.mark.parametrize("case", ["blank", "format", "unicode-blank", "one-trace-declaring-masks"])
def test_trace_files_with_a_blank_first_line_or_a_format_key_are_kept(files, tmp_path, capsys, case):
    """H18-BLANK / H18-FMT: valid traces files that the shape did not know were replaced by
    ``protect --out … --overwrite`` and ``li.save_masks``."""
    gold, a, _, _ = files
    text = gold.read_text(encoding="utf-8")
    first, rest = text.split("\n", 1)
    tr = tmp_path / "tr.jsonl"
    tr.write_text(
        {
            "blank": "\n" + text,
            "format": first[:-1] + ', "format": "mine/1"}\n' + rest,
            "unicode-blank": "\u00a0\n\u2028\n" + text,
            "one-trace-declaring-masks": first[:-1] + ', "format": "lrm_interp.masks/2"}\n',
        }[case],
        encoding="utf-8",
    )
    assert len(li.load_dataset(tr)) == (1 if case.startswith("one") else len(li.load_dataset(gold)))  # valid traces
    before = tr.read_bytes()
    capsys.readouterr()
    assert run_cli(["protect", "--scores", a, "--policy", "final_mlp", "--bits", 3, "--out", tr, "--overwrite"]) == 2
    assert f"--out {tr} holds reasoning traces (JSON lines)" in err_line(capsys)
    with pytest.raises(_io.OtherResultError):
        li.save_masks(li.load_masks(_masks(a, tmp_path)), tr)
    assert tr.read_bytes() == before
    # its own writers still replace it (the file declaring masks was refused to them, H19-FMT2)
    assert run_cli(["parse", "--data", gold, "--out", tr, "--overwrite"]) == 0
    assert tr.read_bytes() == gold.read_bytes()


# ------------------------------------------------------------------ H18-APITAB
def test_saving_the_same_scores_again_keeps_the_tables(files, tmp_path):
    """``li.attribute(..., out_dir=A)`` over the finished command-line result A of the same traces
    deleted ``scores.csv`` and ``heatmap.png`` (its provenance's free memory differed, so it counted
    as another result); the tables of other scores are still removed (H7-API9)."""
    gold, a0, _, _ = files
    a = tmp_path / "A"
    shutil.copytree(a0, a)
    tables = {n: (a / n).read_bytes() for n in ("scores.csv", "heatmap.png")}
    res = li.attribute("toy", gold, out_dir=a, progress=False)
    assert {n: (a / n).read_bytes() for n in tables} == tables
    assert li.Attribution.load(a).scores.equal(res.scores)
    # other scores (another setting) saved over it: the old tables go
    other = li.attribute("toy", gold, k_context=1, progress=False)
    other.save(a, overwrite=True)
    assert not (a / "scores.csv").exists() and not (a / "heatmap.png").exists()


# ------------------------------------------------------------------ H17-SYM
def test_the_same_traces_under_another_name_keep_the_dataset_name(files, tmp_path, capsys):
    gold, _, _, _ = files
    data = tmp_path / "tr.jsonl"
    shutil.copy(gold, data)
    link = tmp_path / "trlink.jsonl"
    os.symlink(data, link)
    a = tmp_path / "A"

    def name(folder):
        return json.loads((folder / "attribution.json").read_text())["provenance"]["dataset"]["name"]

    assert run_cli(["attribute", "--model", "toy", "--data", data, "--out", a, "--quiet"]) == 0
    assert name(a) == "tr"
    assert run_cli(["attribute", "--model", "toy", "--data", link, "--out", a, "--quiet"]) == 0
    assert name(a) == "tr"  # was "trlink": a plain rerun of a finished result renamed it
    a2 = tmp_path / "A2"
    assert run_cli(["attribute", "--model", "toy", "--data", link, "--out", a2, "--quiet"]) == 0
    assert name(a2) == "trlink"  # a new result takes the name it is given
    capsys.readouterr()
    assert run_cli(["compare", "--original", a, "--compressed", a2, "--out", tmp_path / "C"]) == 0
    assert "different dataset names" not in capsys.readouterr().err  # the same traces (their content keys)
    # without the content keys (no partial/ folder) the recorded contents' fingerprint tells (H21-ATTDATA)
    shutil.rmtree(a2 / "partial")
    assert run_cli(["compare", "--original", a, "--compressed", a2, "--out", tmp_path / "C2"]) == 0
    assert "different dataset names" not in capsys.readouterr().err
    # a result of an older version (no fingerprint either): the names are all there is, the note stays
    doc = json.loads((a2 / "attribution.json").read_text())
    del doc["provenance"]["dataset"]["contents_fingerprint"]
    del doc["provenance_sha256"]  # an older version recorded neither
    (a2 / "attribution.json").write_text(json.dumps(doc))
    assert run_cli(["compare", "--original", a, "--compressed", a2, "--out", tmp_path / "C3"]) == 0
    assert "different dataset names 'tr' vs 'trlink'" in capsys.readouterr().err
