"""The session after the twenty-seventh hostile probe: what it left open (H28-APITYPES,
H28-BENCHNEST) and what the twenty-eighth probe found (H29-…); docs/reliability.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from api_walk import call_with_bad, public_callables

import lrm_interp
from lrm_interp.checks import FlagError, flag_parameters


def _flag_cases() -> list[tuple[str, Callable[..., Any], Any, str]]:
    return [(q, fn, owner, flag) for q, fn, owner in public_callables() for flag in flag_parameters(fn)]


FLAG_CASES = _flag_cases()


def test_the_walk_finds_the_public_flags() -> None:
    names = {(q.rsplit(".", 1)[-1] if "__init__" not in q else q.rsplit(".", 2)[-2], f) for q, _, _, f in FLAG_CASES}
    # the ones the probe named, and a dataclass field
    for expected in [
        ("attribute", "progress"),
        ("quantize_model_", "keep_tensors"),
        ("quantization_errors", "relative"),
        ("bits_per_weight", "symmetric"),
        ("BitAllocation", "symmetric"),
        ("save", "overwrite"),
        ("save_jsonl", "replace"),
        ("find_sites", "include_lm_head"),
        ("quantized_site_bits", "symmetric"),
        ("publish_dir", "replace"),
    ]:
        assert expected in names, expected
    assert len(FLAG_CASES) > 200


@pytest.mark.parametrize(("qualname", "fn", "owner", "flag"), FLAG_CASES, ids=[f"{c[0]}:{c[3]}" for c in FLAG_CASES])
def test_every_public_flag_refuses_a_value_that_is_no_bool(qualname: str, fn: Any, owner: Any, flag: str) -> None:
    """H28-APITYPES: ``progress='no'``, ``keep_tensors='no'``, ``relative='no'`` (truthy) used to turn
    the setting on. Every parameter annotated ``bool`` of every public callable refuses such a
    value before its body runs (the other arguments: good flags and paths, else ``None``)."""
    call = call_with_bad(fn, owner, flag, "no")
    with pytest.raises(FlagError, match=rf"\b{flag} must be True(, False or None| or False), got 'no' \(str\)"):
        call()


@pytest.fixture(scope="module")
def toy() -> tuple[Any, Any, Any]:
    """The shipped toy model, its tokenizer and a few gold toy traces."""
    from lrm_interp.data.traces import ReasoningDataset
    from lrm_interp.toy import load_toy_model
    from lrm_interp.toy.tasks import generate_dataset

    model, tok = load_toy_model()
    return model, tok, ReasoningDataset(list(generate_dataset(1, seed=4242))[:2])


def test_attribute_refuses_a_config_that_is_no_attribution_config(toy: Any) -> None:
    """H28-APITYPES: ``attribute(config={...})`` raised "'dict' object has no attribute ..."."""
    model, tok, data = toy
    with pytest.raises(TypeError, match=r"config must be an AttributionConfig, got dict; give its fields as keywords"):
        lrm_interp.attribute(model, data, tokenizer=tok, config={"mode": "joint"}, progress=False)


@pytest.mark.parametrize("sites", [5, 2.5, {"model.layers.0.mlp.up_proj": 1}, b"mlp"])
def test_attribute_refuses_sites_that_are_no_list_or_pattern(toy: Any, sites: Any) -> None:
    """H28-APITYPES: ``attribute(sites=5)`` said "'int' object is not iterable"."""
    model, tok, data = toy
    with pytest.raises(ValueError, match=r"sites must be a regex string, a non-empty list of site names, or None, got"):
        lrm_interp.attribute(model, data, tokenizer=tok, sites=sites, progress=False)


def test_attribute_loads_a_tokenizer_given_as_its_folder(toy: Any, tmp_path: Any) -> None:
    """H28-APITYPES: ``attribute(model, data, tokenizer='<folder>')`` said "str is not a fast
    tokenizer"; the folder is loaded (the same scores as with the object), and a folder without a
    tokenizer is named."""
    model, tok, data = toy
    tok.save_pretrained(tmp_path / "tok")
    kw = dict(sites="mlp", progress=False)
    by_object = lrm_interp.attribute(model, data, tokenizer=tok, **kw)
    by_folder = lrm_interp.attribute(model, data, tokenizer=str(tmp_path / "tok"), **kw)
    assert by_folder.sites == by_object.sites and len(by_object.sites) > 0
    assert (by_folder.scores == by_object.scores).all()
    fingerprint = [r.provenance["model"]["tokenizer"]["fingerprint"] for r in (by_object, by_folder)]
    assert fingerprint[0] == fingerprint[1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"tokenizer .*empty: no tokenizer.json or tokenizer_config.json there"):
        lrm_interp.attribute(model, data, tokenizer=tmp_path / "empty", **kw)


def test_quantization_errors_refuses_bits_given_as_one_number(toy: Any) -> None:
    """H28-APITYPES: ``quantization_errors(model, sites, 3)`` said "'int' object is not iterable",
    sites given as a pattern "'str' object has no attribute 'name'"; the list form still works."""
    model, _, _ = toy
    sites = lrm_interp.find_sites(model, pattern="mlp")
    with pytest.raises(
        TypeError, match=r"choices must be a list of bit widths \(2..8 or 16, e.g. \[2, 3, 4\]\), got 3"
    ):
        lrm_interp.quantization_errors(model, sites, 3)
    with pytest.raises(TypeError, match=r"sites must be a list of Site .*find_sites\(model, pattern='mlp'\)"):
        lrm_interp.quantization_errors(model, "mlp", [3])
    errors = lrm_interp.quantization_errors(model, sites, [4, 3, 3])
    assert set(errors) == {s.name for s in sites}
    assert all(set(e) == {3, 4} and e[3] > e[4] > 0 for e in errors.values())


BENCH = ["bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 1, "--max-new-tokens", 4, "--quiet"]


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory: Any) -> Any:
    """A finished ``bench run --out B`` (the run folder ``B/toy``) and a ``quantize`` result ``Q3``."""
    from cli_run import run_cli

    root = tmp_path_factory.mktemp("h29bench")
    assert run_cli([*BENCH, "--out", root / "B"]) == 0
    assert run_cli(["quantize", "--model", "toy", "--bits", 3, "--out", root / "Q3"]) == 0
    return root


@pytest.mark.parametrize(
    ("out", "where"), [("B/toy", "is"), ("B/toy/outputs", "lies inside"), ("B/toy/new", "lies inside")]
)
def test_bench_run_never_writes_a_run_into_another_run(
    bench_runs: Any, tmp_path: Any, capsys: Any, out: str, where: str
) -> None:
    """H28-BENCHNEST: ``bench run --out B/toy/outputs`` wrote a run folder ``toy`` into the other
    run's outputs (exit 0), where ``bench score --outputs B`` took it for one of its tasks. Refused
    now, by the command and by ``run_suite``, with the folder that holds the runs named; nothing is
    written. ``B`` itself (the resume) and a new folder beside another result's files (``Q3/bench``)
    stay free."""
    from cli_run import copied, err_line, folder_files, run_cli

    from lrm_interp.evaluation.bench_suite import check_runs_folder

    root = copied(bench_runs, tmp_path / "r")
    before = folder_files(root)
    assert run_cli([*BENCH, "--out", root / out]) == 2
    msg = err_line(capsys)
    assert f"--out {root / out} {where} {root / 'B' / 'toy'}, one model's run folder of a bench run" in msg
    assert f"run folders never nest; give the folder that holds the runs ({root / 'B'})" in msg
    with pytest.raises(ValueError, match=r"out .* one model's run folder of a bench run"):
        check_runs_folder(root / out)
    assert folder_files(root) == before and not (root / out / "toy").exists()
    assert run_cli([*BENCH, "--out", root / "B"]) == 0  # the resume: nothing left to generate
    assert folder_files(root) == before
    assert run_cli([*BENCH, "--out", root / "Q3" / "bench"]) == 0
    assert (root / "Q3" / "bench" / "toy" / "run.json").is_file()


def test_a_numpy_bool_is_taken_as_the_bool_it_is(toy: Any) -> None:
    """A NumPy bool (``df.col.any()``) given to a flag is passed on as a Python bool (JSON cannot
    write a NumPy one): ``bits_per_weight`` prices it as the bool, positionally or by keyword."""
    np = pytest.importorskip("numpy")
    from lrm_interp.checks import checked_arguments

    @checked_arguments
    def seen(a: int, flag: bool, *, other: bool | None = None) -> tuple[type, type]:
        return type(flag), type(other)

    assert seen(1, np.True_, other=np.False_) == (bool, bool)
    assert seen(1, flag=np.bool_(False)) == (bool, type(None))
    sites = lrm_interp.find_sites(toy[0])
    bpw = {flag: lrm_interp.bits_per_weight({}, sites, bits=3, symmetric=np.bool_(flag)) for flag in (False, True)}
    assert bpw == {flag: lrm_interp.bits_per_weight({}, sites, bits=3, symmetric=flag) for flag in (False, True)}
    assert bpw[True]["bpw"] == 3.125 and bpw[False]["bpw"] == 3.25  # symmetric: no zero points


@pytest.fixture(scope="module")
def study(tmp_path_factory: Any) -> Any:
    """A finished tiny study (3-bit) and its model, tokenizer and traces (tests copy the folder)."""
    from cli_run import tiny_study

    return tiny_study(tmp_path_factory.mktemp("h29") / "S")


@pytest.mark.parametrize("where", ["partial/notes.md", "partial/dom/notes.md", "partial/mine/a.txt"])
def test_study_overwrite_never_deletes_a_users_file_in_an_attribution_work_folder(
    study: Any, tmp_path: Any, where: str
) -> None:
    """H29-STPARTIAL: ``study --overwrite`` removed ``attribution_rtn3/`` (or ``_fp32/``) whole, a
    user's file in its work folder ``partial/`` included (the H28-STOWNEST check looked at the
    folder's own entries only). Refused now, naming the file; a work folder holding only what runs write there (a run
    key, per-trace partials) is removed as before."""
    from cli_run import TINY_STUDY, copied, folder_files

    from lrm_interp.attribution.resume import foreign_partials
    from lrm_interp.experiments.study import run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    user = out / "attribution_rtn3" / where
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text("mine")
    shown = where if where.count("/") < 2 or "dom" in where else "partial/mine/"
    before = folder_files(out)
    with pytest.raises(ValueError, match=rf"attribution_rtn3 holds files the study did not write \({shown}\)"):
        run_study(model, traces, out, tokenizer=tok, overwrite=True, **{**TINY_STUDY, "bits": 4})
    assert folder_files(out) == before
    user.unlink()
    if user.parent.name == "mine":
        user.parent.rmdir()
    left = out / "attribution_rtn3" / "partial" / "dom" / "old-0123456789.safetensors"  # a run's own file
    left.write_bytes(b"an older run's partial")
    assert foreign_partials(out / "attribution_rtn3" / "partial") == []
    run_study(model, traces, out, tokenizer=tok, overwrite=True, **{**TINY_STUDY, "bits": 4})  # its own: replaced
    assert not left.exists() and not (out / "attribution_rtn3").exists()
    assert (out / "attribution_rtn4" / "attribution.json").is_file()


TOY_TRAIN = [
    "toy", "train", "--steps", 6, "--stop-at", 0, "--anneal-steps", 0, "--batch-size", 4, "--eval-per-family", 1,
    "--hidden", 16, "--layers", 1, "--heads", 2, "--kv-heads", 1, "--intermediate", 32, "--workers", 0,
    "--device", "cpu",
]  # fmt: skip


def test_a_diverged_toy_training_is_never_saved_nor_quantized(tmp_path: Any, capsys: Any) -> None:
    """H29-NANMODEL: ``toy train --lr 1e30`` saved a model of NaN weights (exit 0), which
    ``quantize`` quantized (exit 0). The training is refused when its loss or weights are not
    finite, nothing written; ``quantize`` / ``prune_model_`` refuse a model with a NaN weight,
    naming the site, before any weight changes; ``toy eval`` (accuracy 0, blamed on the length
    limit) refuses it too."""
    from cli_run import err_line, run_cli

    from lrm_interp.model.provenance import NonFiniteError

    assert run_cli([*TOY_TRAIN, "--lr", 1e30, "--out", tmp_path / "M"]) == 2
    err = err_line(capsys)
    assert "training diverged: the loss is nan at step" in err and err.endswith("or weight decay (--weight-decay)")
    assert not (tmp_path / "M").exists()
    assert run_cli([*TOY_TRAIN, "--lr", 1e-3, "--out", tmp_path / "M"]) == 0  # a sane rate trains as before
    capsys.readouterr()
    model, _ = lrm_interp.load_model(tmp_path / "M")
    site = lrm_interp.find_sites(model)[2]
    with torch.no_grad():
        model.get_submodule(site.name).weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "M")
    capsys.readouterr()
    assert run_cli(["quantize", "--model", tmp_path / "M", "--bits", 3, "--out", tmp_path / "Q"]) == 2
    assert err_line(capsys).endswith(
        f"error: {site.name}: its weights hold 1 NaN or infinite value: the quantization would spread them over "
        "the site; the model is broken (a training that diverged?); nothing was changed"
    )
    assert not (tmp_path / "Q").exists()
    assert run_cli(["toy", "eval", "--model", tmp_path / "M", "--per-family", 1, "--quiet"]) == 2
    assert f"evaluate: parameter {site.name}.weight holds 1 non-finite values: the model is broken" in err_line(capsys)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteError, match=rf"{site.name}: its weights hold 1 NaN .* the pruning would spread"):
        lrm_interp.prune_model_(model, method="magnitude", sparsity=0.5, progress=False)
    assert all(torch.allclose(p, before[n], equal_nan=True) for n, p in model.named_parameters())


def test_printed_bench_and_annotator_commands_paste_as_they_read(tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    """H29-PRINTQUOTE: ``bench run``'s "score with" and ``annotate train``'s "use it with" printed
    their paths unquoted: a space split the path, a ``$`` was expanded, a leading ``-`` read as a
    flag when pasted. Both print through ``_io.shell_command`` now; the real parser reads each back."""
    import shlex
    from pathlib import Path

    from cli_run import run_cli

    from lrm_interp.cli.main import build_parser

    monkeypatch.chdir(tmp_path)
    odd = "-my runs $HOME 'x'"
    assert run_cli([*BENCH, "--out", odd]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    argv = shlex.split(line)
    assert argv[:3] == ["lrm-interp", "bench", "score"] and f"--outputs={odd}" in argv
    assert str(build_parser().parse_args(argv[1:]).outputs) == odd
    data = Path(__file__).resolve().parent / "data" / "r1_style"
    out = "my annotator $USER.safetensors"
    assert run_cli(["annotate", "train", "--data", data, "--out", out, "--quiet"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    argv = shlex.split(printed.split("use it with ", 1)[1])
    assert argv[:4] == ["lrm-interp", "annotate", "--annotator", out]
    assert str(build_parser().parse_args(argv[1:]).annotator) == out


def test_an_experiment_of_other_settings_is_named_with_both_values_and_the_resume(tmp_path: Any) -> None:
    """H29-EXHINT: ``experiment protection`` resumed with one setting changed said only "differs in
    per_family" (no values, no way on). Now each setting with both values, and the resume."""
    from lrm_interp.experiments.protection_table import run_protection_experiment

    small = dict(model="toy", per_family=1, attribution_traces=1, random_seeds=(0,), progress=False)
    out = tmp_path / "EX"
    run_protection_experiment(out, only=["fp"], **small)
    with pytest.raises(ValueError) as e:
        run_protection_experiment(out, only=["fp"], **{**small, "per_family": 2, "max_new_tokens": 100})
    assert str(e.value).startswith(f"{out} holds another experiment (differs in ")
    assert "max_new_tokens " in str(e.value) and " there ≠ 100 now, per_family 1 there ≠ 2 now); " in str(e.value)
    assert str(e.value).endswith(
        f"rerun with the settings recorded in {out / 'settings.json'} to resume it, or use a new --out folder"
    )


def test_a_quantize_result_that_lost_its_provenance_record_is_refused(
    bench_runs: Any, tmp_path: Any, capsys: Any
) -> None:
    """H29-QRPROV: with ``lrm_interp_provenance.json`` removed from a ``quantize`` result, the 3-bit
    model loaded as one never compressed (``bench run`` recorded ``compression: []``, exit 0). Its
    ``lrm_interp_quantization.json`` lists the file: the loader refuses, naming it; a folder of an
    older ``quantize`` (a record listing no such file) loads as before."""
    import json
    import shutil

    from cli_run import err_line, run_cli

    q = shutil.copytree(bench_runs / "Q3", tmp_path / "Q3")
    (q / "lrm_interp_provenance.json").unlink()
    with pytest.raises(ValueError, match=r"Q3: lrm_interp_provenance.json is missing, though its lrm_interp_quantiz"):
        lrm_interp.load_model(q)
    capsys.readouterr()
    assert run_cli([q if a == "toy" else a for a in BENCH] + ["--out", tmp_path / "B"]) == 2
    assert "lrm_interp_provenance.json is missing" in err_line(capsys) and not (tmp_path / "B").exists()
    record = json.loads((q / "lrm_interp_quantization.json").read_text())
    older = {k: v for k, v in record.items() if k not in ("files", "record_sha256")}
    (q / "lrm_interp_quantization.json").write_text(json.dumps(older))
    lrm_interp.load_model(q)


def test_a_writers_own_argument_names_a_kind_of_result(toy: Any, tmp_path: Any) -> None:
    """H29-OWNARG: ``BitAllocation.save(path, own=5)`` skipped its check of the file it replaces
    (``own`` is the library's: the kind of result whose own file is written): a user's traces file
    was replaced. ``own`` must name a kind of result; nothing is written otherwise."""
    path = tmp_path / "traces.jsonl"
    path.write_text('{"id": "t1"}\n')
    alloc = lrm_interp.uniform_allocation(lrm_interp.find_sites(toy[0]), 4)
    for bad in (5, "studdy", True):
        with pytest.raises(ValueError, match=r"own must be None or the kind of a result \('attribution', "):
            alloc.save(path, own=bad)
        assert path.read_text() == '{"id": "t1"}\n'
    with pytest.raises(ValueError, match="traces.jsonl"):  # and without own, the file is refused as before
        alloc.save(path)


def test_loading_a_folder_without_a_faithfulness_result_names_it(tmp_path: Any) -> None:
    """H29-FLOADMSG: ``FaithfulnessResult.load(<empty folder>)`` raised a raw "[Errno 2] No such
    file or directory"."""
    from lrm_interp.attribution.faithfulness import FaithfulnessResult

    (tmp_path / "F").mkdir()
    with pytest.raises(FileNotFoundError, match=r"F holds no faithfulness.json: not a faithfulness folder"):
        FaithfulnessResult.load(tmp_path / "F")
    with pytest.raises(FileNotFoundError, match=r"G does not exist: not a faithfulness folder"):
        FaithfulnessResult.load(tmp_path / "G")


@pytest.mark.parametrize("how", ["swapped", "replaced"])
def test_a_refused_study_rerun_leaves_the_finished_study_as_it_was(study: Any, tmp_path: Any, how: str) -> None:
    """H29-STSWAP: a rerun of a finished study whose ``attribution_fp32/`` and ``attribution_rtn3/``
    were swapped (or one replaced by another attribution) was refused by the attribution, but only
    after ``study.json`` had been rewritten as unfinished (``complete`` false, its commands, files
    and masks gone; ``StudyResult.load`` then said "did not finish"). Refused now before the first
    write, naming the folder; every file as it was."""
    import shutil

    from cli_run import TINY_STUDY, copied, folder_files

    from lrm_interp.experiments.study import StudyResult, run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    fp, q = out / "attribution_fp32", out / "attribution_rtn3"
    if how == "swapped":
        fp.rename(out / "x")
        q.rename(fp)
        (out / "x").rename(q)
    else:
        shutil.rmtree(q)
        shutil.copytree(fp, q)
    before = folder_files(out)
    with pytest.raises(ValueError, match=r"attribution_(fp32|rtn3)/ is not the attribution the study made"):
        run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert folder_files(out) == before
    with pytest.raises(ValueError, match=r"(is|are) not the (attribution|pair) the study made"):  # not "did not finish"
        StudyResult.load(out)


def test_the_two_record_files_of_a_quantize_result_must_agree(bench_runs: Any, tmp_path: Any) -> None:
    """H29-QRSPLIT: the 4-bit result's ``lrm_interp_quantization.json`` copied into a 3-bit one
    (each file intact): ``bench run`` recorded 3 bits, ``study`` refused quoting 4. The loader now
    refuses a pair that describes two quantizations, naming both values."""
    import shutil

    from cli_run import run_cli

    root = tmp_path / "r"
    root.mkdir()
    q3 = shutil.copytree(bench_runs / "Q3", root / "Q3")
    assert run_cli(["quantize", "--model", "toy", "--bits", 4, "--out", root / "Q4", "--quiet"]) == 0
    lrm_interp.load_model(q3)  # as written: one quantization
    shutil.copy(root / "Q4" / "lrm_interp_quantization.json", q3)
    with pytest.raises(
        ValueError,
        match=r"Q3: its lrm_interp_quantization.json describes another quantization than its "
        r"lrm_interp_provenance.json \(bits 4 there, 3 in lrm_interp_provenance.json\)",
    ):
        lrm_interp.load_model(q3)


# ----------------------------------------------------------------- the twenty-ninth probe (H30-…), found while it ran
def test_attribute_refuses_a_site_named_twice(toy: Any) -> None:
    """H30-DUPSITES: ``attribute(sites=[S, S, T])`` scored S twice (relative importances halved) and
    wrote a result its loader refused. The config refuses a site named twice, before any work."""
    model, tok, data = toy
    s = lrm_interp.find_sites(model, pattern="mlp")
    with pytest.raises(ValueError, match=rf"sites names a site more than once: \['{s[0].name}'\]; give each site once"):
        lrm_interp.attribute(model, data, tokenizer=tok, sites=[s[0], s[0].name, s[1]], progress=False)


def test_quantize_refuses_a_nan_outside_the_quantized_sites(bench_runs: Any, tmp_path: Any, capsys: Any) -> None:
    """H30-NANQUANT: a NaN in a norm (no linear site) passed the H29-NANMODEL check of the sites:
    ``quantize`` wrote the broken copy (exit 0). Any parameter that is not finite is refused."""
    from cli_run import err_line, run_cli

    model, tok = lrm_interp.load_model("toy")
    with torch.no_grad():
        model.model.norm.weight[3] = float("inf")
    model.save_pretrained(tmp_path / "M")
    tok.save_pretrained(tmp_path / "M")
    capsys.readouterr()
    assert run_cli(["quantize", "--model", tmp_path / "M", "--bits", 3, "--out", tmp_path / "Q"]) == 2
    assert err_line(capsys).endswith(
        "error: parameter model.norm.weight holds 1 NaN or infinite value: the model is broken (a training that "
        "diverged?); its quantization would be too; nothing was changed"
    )
    assert not (tmp_path / "Q").exists()


def test_a_finished_study_recomputes_a_deleted_attribution_folder(study: Any, tmp_path: Any) -> None:
    """H30-STRMATTR: with the H29-STSWAP check, a rerun of a finished study whose
    ``attribution_rtn3/`` was deleted was refused as "replaced"; a deleted folder is computed again
    (as a deleted ``bits.json`` is written again), and the study loads as before."""
    import shutil

    from cli_run import TINY_STUDY, copied

    from lrm_interp.experiments.study import StudyResult, run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    shutil.rmtree(out / "attribution_rtn3")
    run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert (out / "attribution_rtn3" / "attribution.json").is_file()
    assert StudyResult.load(out).rows == StudyResult.load(src).rows


def test_run_study_refuses_an_out_that_is_no_path(study: Any) -> None:
    from cli_run import TINY_STUDY

    from lrm_interp.experiments.study import run_study

    _, model, tok, traces = study
    with pytest.raises(TypeError, match=r"out must be a path \(str or os.PathLike\), got int 5"):
        run_study(model, traces, 5, tokenizer=tok, **TINY_STUDY)


def test_a_model_folder_is_never_written_under_an_alias_name_here(tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    """H30-ALIASOUT: ``quantize --model toy --out toy`` wrote ``./toy``; every ``--model toy`` there
    was then refused as ambiguous, the study's printed commands included. Refused (quantize, toy
    train) before anything is written; the same name in another folder is free."""
    from cli_run import err_line, run_cli

    monkeypatch.chdir(tmp_path)
    for argv in (["quantize", "--model", "toy", "--bits", 3], [*TOY_TRAIN, "--lr", 1e-3]):
        assert run_cli([*argv, "--out", "toy"]) == 2
        assert "--out toy: a model folder named like the model alias 'toy' in the current folder would make every " in (
            err_line(capsys)
        )
        assert not (tmp_path / "toy").exists()
    assert run_cli(["quantize", "--model", "toy", "--bits", 3, "--out", "sub/toy", "--quiet"]) == 0
    capsys.readouterr()
    lrm_interp.load_model("toy")  # no clash: the folder is not here
