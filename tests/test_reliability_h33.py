"""The fixes of the thirty-second hostile probe's left-open findings and of probe 32 (H32-…, H33-…;
docs/reliability.md): each test fails on the code before its fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def study(tmp_path_factory: Any) -> Any:
    """A finished tiny study (3-bit) and its model, tokenizer and traces (tests copy the folder)."""
    from cli_run import tiny_study

    return tiny_study(tmp_path_factory.mktemp("h33") / "S")


def _make_wrong(out: Path, entry: str, now: str) -> None:
    """Turn the study's ``entry`` into ``now``: a folder (holding a note), a file, or a link to the study."""
    p = out / entry
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink()
    if now == "folder":
        p.mkdir()
        (p / "note.txt").write_text("mine\n")
    elif now == "file":
        p.write_text("mine\n")
    else:
        p.symlink_to(out.resolve(), target_is_directory=True)


#: (entry, what it becomes, how the refusal names it)
WRONG = [
    ("masks.safetensors", "folder", "a folder, not the file"),
    ("bits.json", "folder", "a folder, not the file"),
    ("shift.png", "folder", "a folder, not the file"),
    ("results.csv", "folder", "a folder, not the file"),
    ("attribution_fp32/partial", "file", "a file, not the work folder"),
    ("attribution_fp32/scores.csv", "folder", "a folder, not the file"),
    ("attribution_rtn3", "link", "a link to .*, which holds the study, not the attribution folder"),
]


@pytest.mark.parametrize(("entry", "now", "named"), WRONG, ids=[f"{e}-{n}" for e, n, _ in WRONG])
def test_a_study_rerun_refuses_an_entry_of_another_kind_before_writing(
    study: Any, tmp_path: Any, entry: str, now: str, named: str
) -> None:
    """H32-STFILE2: a finished study whose file became a folder (or whose attribution folder became a
    link to the study, its ``partial/`` a file): the rerun rewrote ``study.json`` as unfinished,
    recomputed, then failed ("Is a directory", "File exists"). Refused now before anything is
    written, naming the entry; removing it and rerunning gives the same rows."""
    from cli_run import TINY_STUDY, copied, folder_files

    from lrm_interp.experiments.study import StudyResult, run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    _make_wrong(out, entry, now)
    before, record = folder_files(out), (out / "study.json").read_bytes()
    with pytest.raises(ValueError, match=rf"{out / entry} is {named} the study made there; nothing was changed"):
        run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert folder_files(out) == before and (out / "study.json").read_bytes() == record
    p = out / entry
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()
    run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert StudyResult.load(out).rows == StudyResult.load(src).rows


def test_a_study_overwrite_refuses_a_folder_where_its_file_was(study: Any, tmp_path: Any) -> None:
    """H32-STFILE2 with ``overwrite``: the folder where ``masks.safetensors`` was is not the study's to
    delete (it failed with a raw "Is a directory" after removing the study's record)."""
    from cli_run import TINY_STUDY, copied, folder_files

    from lrm_interp.experiments.study import run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    _make_wrong(out, "masks.safetensors", "folder")
    before = folder_files(out)
    with pytest.raises(ValueError, match="starting the study over removes only what the study wrote"):
        run_study(model, traces, out, tokenizer=tok, overwrite=True, **TINY_STUDY)
    assert folder_files(out) == before


def test_a_study_record_that_became_a_folder_is_named(study: Any, tmp_path: Any, capsys: Any) -> None:
    """H32-STFILE2: ``study.json`` made a folder: "S/study.json: Is a directory" (raw) from the CLI
    and the Python API; now one line naming it."""
    from cli_run import TINY_STUDY, copied, err_line, folder_files, run_cli

    from lrm_interp.experiments.study import StudyResult, run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    _make_wrong(out, "study.json", "folder")
    before = folder_files(out)
    with pytest.raises(ValueError, match="study.json is a folder, not the study's record file"):
        run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    with pytest.raises(ValueError, match="study.json is a folder, not the study's record file"):
        StudyResult.load(out)
    traces.save_jsonl(tmp_path / "tr.jsonl")
    argv = ["study", "--model", "toy", "--data", tmp_path / "tr.jsonl", "--out", out, "--bits", 3, "--resamples", 40]
    assert run_cli([*argv, "--quiet"]) == 2
    assert "study.json is a folder, not the study's record file" in err_line(capsys)
    assert folder_files(out) == before


def test_the_quickstart_hint_names_its_traces_and_its_model(tmp_path: Any, capsys: Any) -> None:
    """H32-QSHINT2: a quickstart rerun with another ``--traces``, or with ``--tiny`` missing (or added),
    was refused with no hint ("differs in other traces" / "another model"), and a settings
    difference hid the traces one. Every difference is named now with the flags that resume the
    recorded study; each hint, pasted, resumes it (every file kept)."""
    from cli_run import err_line, folder_files, run_cli

    cases = {
        ("--tiny",): {
            ("--tiny", "--traces", 6): "differs in other traces); rerun with the settings it records (--tiny "
            "--traces 3)",
            (): "differs in another model); rerun with the settings it records (--tiny)",
            ("--traces", 6, "--bits", 4, "--tiny"): "differs in bits 3 ≠ 4, other traces); rerun with the settings "
            "it records (--tiny --traces 3 --bits 3)",
        },
        (): {
            ("--tiny",): "differs in another model); rerun with the settings it records (without --tiny)",
            ("--traces", 6, "--eval", 3): "differs in tasks [] ≠ ['math', 'logic', 'knowledge'], other traces); rerun "
            "with the settings it records (--eval 0 --traces 3)",
        },
    }
    for made, reruns in cases.items():
        qs = tmp_path / f"QS{len(made)}"
        assert run_cli(["quickstart", *made, "--traces", 3, "--eval", 0, "--out", qs, "--quiet"]) == 0
        capsys.readouterr()
        before = folder_files(qs)
        for extra, expected in reruns.items():
            args = ["quickstart", *extra, "--out", qs, "--quiet"]
            args += [] if "--traces" in extra else ["--traces", 3]
            args += [] if "--eval" in extra else ["--eval", 0]
            assert run_cli(args) == 2
            assert f"error: {qs} holds another study ({expected} to resume it, or use another" in err_line(capsys)
            assert folder_files(qs) == before
        assert run_cli(["quickstart", *made, "--traces", 3, "--eval", 0, "--out", qs, "--quiet"]) == 0
        assert "(resumed: fp, uniform, magnitude, attribution, mixed)" in capsys.readouterr().out


@pytest.mark.parametrize(("model", "kind"), [(" ", "blank \\(only spaces\\)"), ("", "empty")])
def test_a_blank_model_path_is_named_as_the_model(tmp_path: Any, model: str, kind: str) -> None:
    """H32-APITYPES2 (left open): ``run_study(' ', data, out)`` said "check_saved_records: directory is
    blank" (an internal function, not the argument); the model is named now, nothing written."""
    from lrm_interp.checks import EmptyPathError
    from lrm_interp.experiments.study import run_study

    with pytest.raises(EmptyPathError, match=rf"^model is {kind} \('{model}'\): give a path"):
        run_study(model, tmp_path / "tr.jsonl", tmp_path / "S", bits=3, resamples=40)
    assert not (tmp_path / "S").exists()


def test_a_study_attribution_folder_linked_elsewhere_is_still_read(study: Any, tmp_path: Any) -> None:
    """The H32-STFILE2 check refuses a link to the study itself, not a link to an attribution folder kept
    elsewhere (a user's layout): the finished study's rerun reads it and gives the same rows."""
    from cli_run import TINY_STUDY, copied

    from lrm_interp.experiments.study import StudyResult, run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    shutil.move(out / "attribution_fp32", tmp_path / "kept")
    (out / "attribution_fp32").symlink_to(tmp_path / "kept", target_is_directory=True)
    run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert StudyResult.load(out).rows == StudyResult.load(src).rows


@pytest.mark.parametrize("folder", ["attribution_fp32", "attribution_rtn3"])
def test_a_finished_study_rerun_refuses_a_tampered_attribution_before_writing(
    study: Any, tmp_path: Any, folder: str
) -> None:
    """H33-REUSEBAD: a finished study whose attribution tensors were changed under the checksum its
    ``attribution.json`` records: the rerun chose the folder for reuse by that checksum, rewrote
    ``study.json`` as unfinished, then ``Attribution.load`` refused the payload. The folder is loaded
    before anything is written now: the same refusal, every file as it was."""
    from cli_run import TINY_STUDY, copied, folder_files

    from lrm_interp.experiments.study import StudyResult, run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    p = out / folder / "attribution.safetensors"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's payload
    p.write_bytes(bytes(data))
    before = folder_files(out)
    with pytest.raises(ValueError, match=rf"{out / folder}"):
        run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert folder_files(out) == before
    assert json.loads((out / "study.json").read_text())["complete"] is True  # not rewritten as unfinished
    assert StudyResult.load(src).rows


@pytest.mark.parametrize("pattern", ["", " ", "mlp|", "^", "(?:)", "x*", "(mlp)?"])
def test_find_sites_refuses_a_pattern_that_selects_everything(pattern: str) -> None:
    """H33-FINDEMPTY: ``find_sites(model, pattern='mlp|')`` (or ``''``) returned every site, lm_head too
    with ``include_lm_head=True``: the H32-EMPTYMATCH rule of ``resolve_sites``, which
    ``check_site_list`` then advised bypassing by pasting exactly that call. Refused now, and the
    hint no longer offers the pattern."""
    import lrm_interp
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.encoding import check_site_list

    model, _ = lrm_interp.load_model("toy")
    for lm_head in (False, True):
        with pytest.raises(
            ValueError, match=rf"^sites regex {re_escape(repr(pattern))} (is empty|matches the empty string)"
        ):
            find_sites(model, pattern=pattern, include_lm_head=lm_head)
    assert len(find_sites(model, pattern="mlp")) == 12  # a pattern naming what it selects: as before
    with pytest.raises(TypeError) as e:
        check_site_list(pattern, "build_masks")
    assert f"pattern={pattern!r}" not in str(e.value)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_modules_by_score_refuses_scores_of_other_sites_or_not_finite() -> None:
    """H33-MBSKEYS: ``build_masks(sites, 'modules_by_score', scores=...)`` with scores naming none of
    the sites (``{}``, another prefix) protected modules in module order; NaN / -inf / a string
    value ranked as they came. Each is refused naming the sites or the value; saliency weighting by
    ``module_importance`` refuses a site it does not score too."""
    import math

    import lrm_interp
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import build_masks

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    good = {s.name: float(i + 1) for i, s in enumerate(sites)}
    chosen = build_masks(sites, "modules_by_score", budget=0.1, scores=good)
    assert list(chosen) == [s.name for s in sites if s.name in chosen] and len(chosen) > 0
    assert sites[-1].name in chosen  # the best score first
    none = "the scores have no value for 28 of the 28 sites \\(they score none of them\\)"
    for scores in ({}, {"x." + k: v for k, v in good.items()}):
        with pytest.raises(ValueError, match=rf"^modules_by_score: {none}"):
            build_masks(sites, "modules_by_score", budget=0.1, scores=scores)
    partial = dict(list(good.items())[1:])
    with pytest.raises(ValueError, match="no value for 1 of the 28 sites \\(e.g. model.layers.0.self_attn.q_proj\\)"):
        build_masks(sites, "modules_by_score", budget=0.1, scores=partial)
    for bad, err, said in (
        (math.nan, ValueError, "is nan: a module's importance is finite and >= 0"),
        (-math.inf, ValueError, "is -inf: a module's importance is finite and >= 0"),
        ("3", TypeError, "\\(site -> importance\\) must be a number, got '3'"),
    ):
        with pytest.raises(err, match=rf"^scores\['{sites[0].name}'\] {said}"):
            build_masks(sites, "modules_by_score", budget=0.1, scores={**good, sites[0].name: bad})


def test_a_quickstart_rerun_refuses_a_file_where_its_tiny_model_was(tmp_path: Any, capsys: Any) -> None:
    """H33-QSTINYFILE: ``tiny_model`` replaced by a file: the rerun exited 0 and printed "wrote" and
    commands loading ``tiny_model``, which ``save_pretrained`` never wrote (it logged an error onto a
    file path). Refused now, with ``--overwrite`` too; the file is kept."""
    from cli_run import err_line, folder_files, run_cli

    qs = tmp_path / "QS"
    argv = ["quickstart", "--tiny", "--traces", 3, "--eval", 0, "--out", qs, "--quiet"]
    assert run_cli(argv) == 0
    shutil.rmtree(qs / "tiny_model")
    (qs / "tiny_model").write_text("mine\n")
    capsys.readouterr()
    before = folder_files(qs)
    for extra in ((), ("--overwrite",)):
        assert run_cli([*argv, *extra]) == 2
        assert f"{qs / 'tiny_model'} is a file, not the folder the quickstart writes its tiny model into" in err_line(
            capsys
        )
        assert folder_files(qs) == before


@pytest.mark.parametrize("bits", [2, 3, 16])
@pytest.mark.parametrize(
    ("bad", "err"), [(float("nan"), ValueError), (float("inf"), ValueError), (-1.0, ValueError), ("x", TypeError)]
)
def test_allocate_bits_refuses_an_error_that_is_no_error(bits: int, bad: Any, err: type) -> None:
    """H33-ALLOCNAN: an error of NaN / +inf / -1 (or a string) at any bit width was taken: NaN at 3 bits
    sent the site to 2 bits, -1 at 4 bits pushed another site down. Refused, naming the site and
    the bit width, as the sensitivities are."""
    import lrm_interp
    from lrm_interp import quantization_errors
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.bit_allocation import allocate_bits

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    errors = quantization_errors(model, sites, [2, 3, 4, 8, 16])
    assert allocate_bits(sites, errors, None, 3.5).bits  # the measured errors: allocated
    edited = {k: dict(v) for k, v in errors.items()}
    edited[sites[0].name][bits] = bad
    said = "must be a number" if err is TypeError else "a quantization error is finite and >= 0"
    with pytest.raises(err, match=rf"^allocate_bits: errors\['{sites[0].name}'\]\[{bits}\] .*{said}"):
        allocate_bits(sites, edited, None, 3.5)


@pytest.mark.parametrize("policy", ["global_top", "per_module_top"])
@pytest.mark.parametrize("granularity", ["elements", "rows"])
def test_an_all_zero_saliency_is_refused(policy: str, granularity: str) -> None:
    """H33-ZEROSAL: a saliency of zeros everywhere gave a 2 % mask of arbitrary weights (the first of
    each module) with no word; all-zero module scores and sensitivities were refused already. One
    module of non-zero saliency is enough to rank by."""
    import torch

    import lrm_interp
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import build_masks

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)

    def zeros(one: bool = False) -> list[tuple[Any, torch.Tensor]]:
        def t(i: int, s: Any) -> torch.Tensor:  # module 5 ranks its weights (a constant one would not, H35)
            if one and i == 5:
                return torch.arange(s.n_weights, dtype=torch.float32).reshape(s.out_features, s.in_features)
            return torch.zeros(s.out_features, s.in_features)

        return [(s, t(i, s)) for i, s in enumerate(sites)]

    with pytest.raises(ValueError, match=rf"^{policy}: the saliency is 0 for every weight of the 28 sites"):
        build_masks(sites, policy, 0.02, saliency=zeros(), granularity=granularity)
    masks = build_masks(sites, policy, 0.02, saliency=zeros(one=True), granularity=granularity)
    assert sum(m.n_protected for m in masks.values()) > 0


def test_build_masks_refuses_a_site_of_another_shape_than_the_saliency() -> None:
    """H33-SITESHAPE: a ``Site`` whose ``in_features`` were doubled, given with a saliency of the real
    weights: 15892 weights protected for a 2 % budget of 15729 (the budget counted over the given
    site, the scores over the saliency's). Refused, both shapes named, for a stream and a list."""
    import dataclasses

    import lrm_interp
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import build_masks
    from lrm_interp.protect import saliency as sal

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    k = sites[1]
    wide = list(sites)
    wide[1] = dataclasses.replace(k, in_features=2 * k.in_features, n_weights=2 * k.n_weights)
    said = rf"^build_masks: site {k.name} is \[{k.out_features}, {2 * k.in_features}\] .* in sites but"
    for saliency in (sal.magnitude(model, sites), list(sal.magnitude(model, sites))):
        with pytest.raises(ValueError, match=said):
            build_masks(wide, "global_top", 0.02, saliency=saliency)
    masks = build_masks(sites, "global_top", 0.02, saliency=sal.magnitude(model, sites))
    assert sum(m.n_protected for m in masks.values()) == round(0.02 * sum(s.n_weights for s in sites))


def test_a_study_refusal_names_every_difference_it_can_see_before_the_model(tmp_path: Any, capsys: Any) -> None:
    """H33-HINTPART: ``study`` over a study of other traces and another setting named only the setting
    ("rerun with the settings it records (--budget 0.05) to resume it"); followed, it was refused
    for "other traces". The traces are compared before the model loads now, and a hint given before
    the model is compared names the recorded model too; pasted, it resumes."""
    from cli_run import err_line, folder_files, run_cli

    tr, other, out = tmp_path / "tr.jsonl", tmp_path / "other.jsonl", tmp_path / "S"
    assert run_cli(["toy", "traces", "--gold", "--per-family", 1, "--seed", 7, "--out", tr]) == 0
    assert run_cli(["toy", "traces", "--gold", "--per-family", 1, "--seed", 8, "--out", other]) == 0
    study = ["study", "--model", "toy", "--bits", 3, "--resamples", 40, "--out", out, "--quiet"]
    assert run_cli([*study, "--data", tr, "--budget", 0.05]) == 0
    capsys.readouterr()
    before = folder_files(out)
    assert run_cli([*study, "--data", other]) == 2
    assert f"{out} holds another study (differs in budget 0.05 ≠ 0.02, other traces); use another --out" in err_line(
        capsys
    )
    assert run_cli([*study, "--data", tr]) == 2
    hint = "rerun with the settings it records (--budget 0.05, with its model: --model toy) to resume it, or use"
    assert f"(differs in budget 0.05 ≠ 0.02); {hint}" in err_line(capsys)
    assert folder_files(out) == before
    assert run_cli([*study, "--data", tr, "--budget", 0.05, "--model", "toy"]) == 0  # the hint, pasted: resumes
    assert "(resumed: fp, uniform, magnitude, attribution, mixed)" in capsys.readouterr().out


# --- the thirty-third probe (H34-…) --------------------------------------------------------------


@pytest.mark.parametrize("policy", ["global_top", "per_module_top"])
def test_a_constant_saliency_is_refused(policy: str) -> None:
    """H34-CONSTSAL: a saliency of the same non-zero value everywhere (H33-ZEROSAL refused only zeros)
    gave a 2 % mask of the first weights of each module. Refused, naming the value."""
    import torch

    import lrm_interp
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import build_masks

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    ones = [(s, torch.full((s.out_features, s.in_features), 2.5)) for s in sites]
    with pytest.raises(ValueError, match=rf"^{policy}: the saliency is 2.5 for every weight of the 28 sites"):
        build_masks(sites, policy, 0.02, saliency=ones)


def test_a_saliency_by_site_name_is_read_and_one_of_no_site_refused() -> None:
    """H34-SALNAME: a saliency given as ``(name, tensor)`` pairs ended in a raw ``AttributeError``
    ('str' object has no attribute 'in_features'); the names of the sites given are read as those
    sites now (the same masks as the stream), anything else is a ``TypeError`` naming it."""
    import lrm_interp
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import build_masks
    from lrm_interp.protect import saliency as sal

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    want = build_masks(sites, "global_top", 0.02, saliency=sal.magnitude(model, sites))
    got = build_masks(sites, "global_top", 0.02, saliency=[(s.name, t) for s, t in sal.magnitude(model, sites)])
    assert {k: m.dense().tolist() for k, m in got.items()} == {k: m.dense().tolist() for k, m in want.items()}
    with pytest.raises(TypeError, match="^build_masks: the saliency must give \\(Site, tensor\\) pairs .* is 5"):
        build_masks(sites, "global_top", 0.02, saliency=[(5, t) for _, t in sal.magnitude(model, sites)])


def test_final_mlp_refuses_a_never_that_leaves_nothing() -> None:
    """H34-FMNEVER: ``build_masks(sites, 'final_mlp', never=<the last layer's mlp>)`` returned an
    empty mask set with no word."""
    import lrm_interp
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import build_masks

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    assert len(build_masks(sites, "final_mlp", never="gate_proj")) == 2
    with pytest.raises(ValueError, match="excludes every site policy 'final_mlp' protects"):
        build_masks(sites, "final_mlp", never=r"layers\.3\.mlp")


@pytest.mark.parametrize("value", ["bool", "numpy bool", "torch bool", "str", "negative"])
def test_scores_and_sensitivities_must_be_numbers_of_importance(value: str) -> None:
    """H34-NPBOOL, H34-NEGMI: a sensitivity of ``'3'``, ``True`` or a numpy / torch bool was read as a number
    by ``allocate_bits``; module scores (``modules_by_score``, ``module_importance``) took a negative
    importance, which inverts the ranking or the weighing. Each is refused, naming the site."""
    import numpy as np
    import torch

    import lrm_interp
    from lrm_interp import quantization_errors
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import build_masks
    from lrm_interp.protect.bit_allocation import allocate_bits

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    v = {"bool": True, "numpy bool": np.bool_(True), "torch bool": torch.tensor(True), "str": "3", "negative": -1.0}
    bad = {s.name: float(i + 1) for i, s in enumerate(sites)} | {sites[0].name: v[value]}
    err = ValueError if value == "negative" else TypeError
    with pytest.raises(err, match=rf"^scores\['{sites[0].name}'\]"):
        build_masks(sites, "modules_by_score", 0.1, scores=bad)
    errors = quantization_errors(model, sites, [2, 3, 4, 8, 16])
    with pytest.raises(err, match=rf"allocate_bits: .*{sites[0].name}"):
        allocate_bits(sites, errors, bad, 3.5)


def test_module_scores_that_are_all_equal_are_refused() -> None:
    """H34-CONSTSAL (module scores): scores equal for every module (all 1.0) protected the modules in
    module order; all-zero scores were refused already (H8-NAN2). Scores equal only among the
    ``always`` sites still rank the others."""
    import lrm_interp
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import build_masks

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    with pytest.raises(ValueError, match="^modules_by_score: every module score is 1: nothing to rank the modules by"):
        build_masks(sites, "modules_by_score", 0.2, scores={s.name: 1.0 for s in sites})
    scores = {s.name: 1.0 if "self_attn" in s.name else float(i) for i, s in enumerate(sites)}
    assert build_masks(sites, "modules_by_score", 0.2, scores=scores, never="self_attn")


@pytest.mark.parametrize("kind", ["zero", "equal", "growing"])
def test_allocate_bits_refuses_errors_that_do_not_fall_with_the_bits(kind: str) -> None:
    """H34-ALLOCZERO: errors all 0 (a model of zero or constant weights quantizes exactly), equal at
    every width, or growing with the bits: an allocation drawn from no information ("21 at 2, 2 at 4,
    1 at 8, 4 at 16 bits"), and upgrades that worsened the objective were taken (the greedy started at
    ratio -1). Refused; with one site whose error grows among real ones, that site is never upgraded."""
    import lrm_interp
    from lrm_interp import quantization_errors
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.bit_allocation import allocate_bits

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    widths = [2, 3, 4, 8, 16]
    value = {"zero": lambda b: 0.0, "equal": lambda b: 1.0, "growing": lambda b: float(b)}[kind]
    flat = {s.name: {b: value(b) for b in widths} for s in sites}
    with pytest.raises(ValueError, match="^allocate_bits: no site's error falls with more bits"):
        allocate_bits(sites, flat, None, 3.744)
    real = {k: dict(v) for k, v in quantization_errors(model, sites, widths).items()}
    real[sites[0].name] = {b: float(b) for b in widths}  # this one grows: never worth a bit
    alloc = allocate_bits(sites, real, None, 15.9)  # budget for every other site at 16 bits, and more
    assert alloc.bits[sites[0].name] == 2 and alloc.bits[sites[1].name] == 16  # it got 8 bits before


def test_granularity_is_refused_where_the_policy_ignores_it() -> None:
    """H34-GRANIGN: ``granularity='bogus'`` (or ``'rows'``) was ignored by ``final_mlp`` and
    ``modules_by_score`` while an unused ``behavior=`` is refused (H15-MBI)."""
    import lrm_interp
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import build_masks

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    scores = {s.name: float(i + 1) for i, s in enumerate(sites)}
    with pytest.raises(ValueError, match="^granularity must be elements, rows or cols"):
        build_masks(sites, "final_mlp", granularity="bogus")
    for policy, kw in (("final_mlp", {}), ("modules_by_score", {"scores": scores})):
        with pytest.raises(ValueError, match=rf"granularity='rows' is read only by the top-k .* policy '{policy}'"):
            build_masks(sites, policy, 0.2, granularity="rows", **kw)


def test_a_quickstart_model_file_turned_into_a_folder_is_named(tmp_path: Any, capsys: Any) -> None:
    """H34-QSCFGDIR: ``tiny_model/config.json`` made a folder: "config.json edited since?" advised
    ``--overwrite``, which ended in a raw "Is a directory". One line naming it now, with and without
    ``--overwrite``; the folder (and the note in it) kept."""
    from cli_run import err_line, folder_files, run_cli

    qs = tmp_path / "QS"
    argv = ["quickstart", "--tiny", "--traces", 3, "--eval", 0, "--out", qs, "--quiet"]
    assert run_cli(argv) == 0
    (qs / "tiny_model" / "config.json").unlink()
    (qs / "tiny_model" / "config.json").mkdir()
    (qs / "tiny_model" / "config.json" / "note.txt").write_text("keep\n")
    capsys.readouterr()
    before = folder_files(qs)
    for extra in ((), ("--overwrite",)):
        assert run_cli([*argv, *extra]) == 2
        said = f"{qs / 'tiny_model' / 'config.json'} is a folder, not the file the quickstart writes there"
        assert said in err_line(capsys)
        assert folder_files(qs) == before


def test_module_importance_is_a_finite_non_negative_weight_named_when_it_overflows() -> None:
    """H34-NEGMI, H34-MIHUGE: ``module_importance`` of -1 inverted the attribution saliency's ranking (or
    dropped a site); one of 1e308 was refused as "saliency of … has 16384 non-finite values", not
    naming the importance that overflowed."""
    import lrm_interp
    from lrm_interp.data.tokens import encode_trace
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import saliency as sal
    from lrm_interp.toy.tasks import generate_dataset

    model, tok = lrm_interp.load_model("toy")
    sites = find_sites(model)[:2]
    enc = [encode_trace(tok, t) for t in generate_dataset(1, seed=3)]
    behaviors = sorted({sp.behavior for e in enc for sp in e.spans})[:1]
    with pytest.raises(ValueError, match=rf"^scores\['{sites[0].name}'\] is -1.0: a module's importance is finite"):
        sal.attribution(model, sites, enc, behaviors, bits=3, module_importance={s.name: -1.0 for s in sites})
    huge = sal.attribution(model, sites, enc, behaviors, bits=3, module_importance={s.name: 1e308 for s in sites})
    with pytest.raises(ValueError, match=rf"^module_importance of {sites[0].name} \(1e\+308\) overflows its saliency"):
        list(huge)


# --- the thirty-fourth probe (H35-…) -------------------------------------------------------------


def test_per_module_top_refuses_a_saliency_constant_within_every_module() -> None:
    """H35-PMTCONST: a saliency constant within every module (other values across modules) gave the
    first weights of each module; per_module_top ranks within modules. Refused; one module that
    ranks is enough; every weight protected (budget 1) needs no ranking (H35-CONSTFULL)."""
    import torch

    import lrm_interp
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import build_masks

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)

    def sal(ranked: bool = False) -> list[tuple[Any, torch.Tensor]]:
        out = []
        for i, s in enumerate(sites):
            t = torch.full((s.out_features, s.in_features), float(i + 1))
            if ranked and i == 3:
                t[0, 0] = 100.0
            out.append((s, t))
        return out

    with pytest.raises(ValueError, match="^per_module_top: the saliency is constant within each of the 28 modules"):
        build_masks(sites, "per_module_top", 0.02, saliency=sal())
    assert build_masks(sites, "per_module_top", 0.02, saliency=sal(ranked=True))
    n = sum(s.n_weights for s in sites)
    for policy in ("global_top", "per_module_top"):
        ones = [(s, torch.ones(s.out_features, s.in_features)) for s in sites]
        assert sum(m.n_protected for m in build_masks(sites, policy, 1.0, saliency=ones).values()) == n


def test_allocate_bits_is_scale_invariant_and_refuses_information_only_at_sensitivity_zero() -> None:
    """H35-ALLOCSCALE: equal sensitivities of 1e-320 (gains underflowed) or 1e308 (overflowed) gave
    other allocations than ``sensitivity=None``; H35-ALLOCSENS0: the only site whose error falls
    weighed 0, the others flat: an allocation of no information. H35-NUMERR: a ``Decimal`` error
    failed in the arithmetic, a complex tensor in ``float()``."""
    from decimal import Decimal

    import torch

    import lrm_interp
    from lrm_interp import quantization_errors
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.bit_allocation import allocate_bits

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    widths = [2, 3, 4, 8, 16]
    errors = quantization_errors(model, sites, widths)
    base = allocate_bits(sites, errors, None, 3.5).bits
    for v in (1e-320, 1e308):
        assert allocate_bits(sites, errors, {s.name: v for s in sites}, 3.5).bits == base
    flat = {s.name: {b: 1.0 for b in widths} for s in sites} | {sites[0].name: dict(errors[sites[0].name])}
    sens = {s.name: 0.0 if s is sites[0] else 1.0 for s in sites}
    with pytest.raises(ValueError, match="^allocate_bits: no site's error falls with more bits \\(the 27 sites'"):
        allocate_bits(sites, flat, sens, 3.5)
    as_decimal = {k: {b: Decimal(str(e)) for b, e in v.items()} for k, v in errors.items()}
    assert allocate_bits(sites, as_decimal, None, 3.5).bits == base
    with pytest.raises(TypeError, match="must be a number, got tensor\\(1.\\+5.j\\)"):
        allocate_bits(sites, errors, {s.name: torch.tensor(1 + 5j) for s in sites}, 3.5)


@pytest.mark.parametrize("value", [bytearray(b"99"), memoryview(b"50")])
def test_bytes_like_values_are_no_numbers(value: Any) -> None:
    """H35-BYTESNUM: ``bytearray(b"99")`` / ``memoryview(b"50")`` were read as 99 / 50 in module
    scores and sensitivities."""
    import lrm_interp
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import build_masks

    model, _ = lrm_interp.load_model("toy")
    sites = find_sites(model)
    scores = {s.name: float(i + 1) for i, s in enumerate(sites)} | {sites[0].name: value}
    with pytest.raises(TypeError, match=rf"^scores\['{sites[0].name}'\] \(site -> importance\) must be a number"):
        build_masks(sites, "modules_by_score", 0.1, scores=scores)


def test_quantize_refuses_masks_that_are_not_bool() -> None:
    """H35-FLOATMASK: ``quantize_model_(masks={site: float tensor})`` (a saliency dict passed as masks)
    protected every non-zero weight and quantized nothing, with no word."""
    import torch

    import lrm_interp
    from lrm_interp.model.sites import find_sites

    model, _ = lrm_interp.load_model("toy")
    s = find_sites(model)[0]
    before = model.get_submodule(s.name).weight.detach().clone()
    sal = {s.name: torch.rand(s.out_features, s.in_features)}
    with pytest.raises(TypeError, match=rf"^masks\['{s.name}'\] is a float32 tensor: a mask is a bool tensor"):
        lrm_interp.quantize_model_(model, bits=3, sites=[s], masks=sal, progress=False)
    assert torch.equal(model.get_submodule(s.name).weight, before)
    lrm_interp.quantize_model_(model, bits=3, sites=[s], masks={s.name: sal[s.name] > 0.98}, progress=False)
    assert not torch.equal(model.get_submodule(s.name).weight, before)
