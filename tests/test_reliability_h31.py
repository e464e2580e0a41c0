"""The session of the thirtieth hostile probe (H31-…; docs/reliability.md) and what it tidied."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from api_walk import call_with_bad, public_callables

from lrm_interp.checks import EmptyPathError, path_parameters
from lrm_interp.compress import driver
from lrm_interp.model import provenance
from lrm_interp.model.provenance import NonFiniteError
from lrm_interp.model.sites import find_sites
from lrm_interp.testing import tiny_model


def _counting(monkeypatch: Any) -> list[int]:
    """Patch ``non_finite_count`` where the driver and provenance use it; the ids of the tensors read."""
    seen: list[int] = []
    real = provenance.non_finite_count

    def count(t: torch.Tensor) -> int:
        seen.append(t.data_ptr())
        return real(t)

    monkeypatch.setattr(provenance, "non_finite_count", count)
    monkeypatch.setattr(driver, "non_finite_count", count)
    return seen


def test_the_finiteness_check_before_a_compression_reads_each_weight_once(monkeypatch: Any) -> None:
    """H29-NANMODEL checked the sites' weights, H30-NANQUANT then every parameter: the sites'
    weights were read twice before a quantization (twice 16 GB for an 8B model). One pass now
    reads every parameter once, and still names the site whose weight is broken."""
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    seen = _counting(monkeypatch)
    driver.check_finite_weights(model, sites, "quantization")
    params = [p.data_ptr() for p in model.parameters()]
    assert sorted(seen) == sorted(params)  # each parameter once, nothing else
    with torch.no_grad():
        model.get_submodule(sites[3].name).weight[1, 2] = float("-inf")
        model.model.norm.weight[0] = float("nan")  # after the site in parameter order
    with pytest.raises(NonFiniteError, match=rf"^{sites[3].name}: its weights hold 1 NaN or infinite value: the "):
        driver.check_finite_weights(model, sites, "quantization")
    # the same broken weight outside the sites compressed is named as a parameter
    with pytest.raises(NonFiniteError, match=rf"^parameter {sites[3].name}\.weight holds 1 NaN or infinite value"):
        driver.check_finite_weights(model, sites[:2], "pruning")


def test_a_site_whose_weight_is_a_buffer_is_still_checked(monkeypatch: Any) -> None:
    """A linear whose ``weight`` is a buffer (some packed or frozen layers) is not among the
    parameters: the single pass reads it besides them."""
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    mod = model.get_submodule(sites[0].name)
    w = mod.weight.detach().clone()
    del mod.weight
    mod.register_buffer("weight", w)
    seen = _counting(monkeypatch)
    driver.check_finite_weights(model, sites, "quantization")
    assert sorted(seen) == sorted([p.data_ptr() for p in model.parameters()] + [w.data_ptr()])
    w[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=rf"^{sites[0].name}: its weights hold 1 NaN or infinite value"):
        driver.check_finite_weights(model, sites, "quantization")


def _path_cases() -> list[tuple[str, Callable[..., Any], Any, str]]:
    return [
        (q, fn, owner, name)
        for q, fn, owner in public_callables()
        for name in path_parameters(fn)
        if name not in getattr(inspect.unwrap(fn), "__own_path_checks__", ())  # the body's own message
    ]


PATH_CASES = _path_cases()


def test_the_walk_finds_the_public_path_parameters() -> None:
    names = {(q.rsplit(".", 1)[-1] if "__init__" not in q else q.rsplit(".", 2)[-2], p) for q, _, _, p in PATH_CASES}
    for expected in [  # the ones the thirtieth probe named
        ("run_protection_experiment", "out"),
        ("quickstart_study", "out_dir"),
        ("run_quickstart", "out_dir"),
        ("run_shift_study", "out"),
        ("save", "out"),
        ("run_study", "out"),
        ("load", "path"),
    ]:
        assert expected in names, expected
    assert len(PATH_CASES) > 150


@pytest.mark.parametrize(
    ("bad", "error"), [(5, TypeError), (b"S1", TypeError), ("", EmptyPathError), (" ", EmptyPathError)]
)
@pytest.mark.parametrize(("qualname", "fn", "owner", "name"), PATH_CASES, ids=[f"{c[0]}:{c[3]}" for c in PATH_CASES])
def test_every_public_path_parameter_refuses_a_value_that_is_no_path(
    qualname: str, fn: Any, owner: Any, name: str, bad: Any, error: type[Exception]
) -> None:
    """H31-APIOUT: ``run_protection_experiment(out=5)`` (and four more entry points) raised a raw
    pathlib ``TypeError``; ``out=""`` wrote into the current folder. Every parameter annotated as a
    path of every public callable refuses a value that is no path, or an empty one, naming the
    function and the parameter, before its body runs (the other arguments: a path ``"x"``, a flag
    ``True``, else ``None``)."""
    owner_name = fn.__qualname__.removesuffix(".__init__")
    what = "must be a path" if error is TypeError else "is (empty|blank)"
    with pytest.raises(error, match=rf"^{owner_name}: {name} {what}"):
        call_with_bad(fn, owner, name, bad)()


@pytest.mark.parametrize(
    ("compress", "kw"),
    [
        ("quantize_model_", {"bits": 3, "method": "rtn"}),
        ("quantize_model_", {"bits": 3, "method": "gptq", "calib": torch.randint(0, 250, (2, 16))}),
        ("prune_model_", {"sparsity": 0.5, "method": "magnitude"}),
        ("prune_model_", {"sparsity": 0.5, "method": "sparsegpt", "calib": torch.randint(0, 250, (2, 16))}),
    ],
)
def test_a_compression_refuses_a_site_named_twice(compress: str, kw: dict[str, Any]) -> None:
    """H31-QDUPSITES: ``quantize_model_(sites=[S, S, T])`` quantized S twice in one call (the
    H12-QQ guard against a second grid is per call) and reported 3 sites; gptq / sparsegpt ended in
    a raw ``KeyError``. The site list is refused (``resolve_sites``) before any weight changes."""
    import lrm_interp

    model = tiny_model("llama", seed=0)
    s = find_sites(model)
    before = {n: p.clone() for n, p in model.named_parameters()}
    for sites in ([s[0], s[0], s[1]], [s[0].name, s[1], s[0]]):
        with pytest.raises(ValueError, match=rf"sites names a site more than once: \['{s[0].name}'\]; give each"):
            getattr(lrm_interp, compress)(model, sites=sites, progress=False, **kw)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    getattr(lrm_interp, compress)(model, sites=[s[0], s[1]], progress=False, **kw)  # each once: compressed
    assert not torch.equal(model.get_submodule(s[0].name).weight, before[s[0].name + ".weight"])


@pytest.fixture(scope="module")
def study(tmp_path_factory: Any) -> Any:
    """A finished tiny study (3-bit) and its model, tokenizer and traces (tests copy the folder)."""
    from cli_run import tiny_study

    return tiny_study(tmp_path_factory.mktemp("h31") / "S")


@pytest.mark.parametrize("folder", ["attribution_rtn3", "attribution_fp32"])
@pytest.mark.parametrize("now", ["file", "dangling link", "empty file"])
def test_a_study_rerun_refuses_a_file_where_its_attribution_folder_was(
    study: Any, tmp_path: Any, folder: str, now: str
) -> None:
    """H31-STFILE: a finished study whose ``attribution_rtn3/`` became a file (or a link to nothing)
    was taken as a deleted folder (H30-STRMATTR): the rerun rewrote ``study.json`` as unfinished
    (``complete`` false, its masks, files and commands gone), then failed writing into the file.
    Refused now before anything is written, naming the entry; every file is as it was."""
    import shutil

    from cli_run import TINY_STUDY, copied, folder_files

    from lrm_interp.experiments.study import StudyResult, run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    shutil.rmtree(out / folder)
    if now == "dangling link":
        (out / folder).symlink_to(tmp_path / "gone")
    else:
        (out / folder).write_text("" if now == "empty file" else "my notes\n")
    before = folder_files(out)
    what = "a link to nothing" if now == "dangling link" else "a file"
    with pytest.raises(ValueError, match=rf"{out / folder} is {what}, not the attribution folder the study made"):
        run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert folder_files(out) == before
    (out / folder).unlink()  # removed: computed again (H30-STRMATTR)
    run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert StudyResult.load(out).rows == StudyResult.load(src).rows


@pytest.fixture(scope="module")
def nan_forward_model(tmp_path_factory: Any) -> Any:
    """The toy model saved with ``rms_norm_eps: -1`` in its ``config.json``: every weight finite,
    every logit NaN (``sqrt`` of a negative variance)."""
    import json

    import lrm_interp

    folder = tmp_path_factory.mktemp("h31nan") / "M"
    model, tok = lrm_interp.load_model("toy")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rms_norm_eps"] = -1.0
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_a_model_of_finite_weights_and_nan_logits_is_refused_by_every_command(
    nan_forward_model: Any, tmp_path: Any, capsys: Any
) -> None:
    """H31-NANFWD: weights all finite (H29-NANMODEL / H30-NANQUANT passed), forward NaN: ``toy
    eval`` gave accuracy 0 with a length-limit warning, ``bench run`` wrote NUL-byte outputs,
    ``quantize`` and ``bits`` wrote a result, all with exit 0. Each refuses now, naming the first
    module whose output is NaN and the config field, and writes nothing."""
    from cli_run import err_line, run_cli

    m = nan_forward_model
    cause = (
        "the model's forward gives NaN or infinite logits on a 16-token input although its weights are finite "
        "(first in the output of model.layers.0.input_layernorm): its config.json sets rms_norm_eps: -1.0 (a "
        "norm's epsilon must be > 0); the model is broken; nothing was changed"
    )
    capsys.readouterr()
    assert run_cli(["quantize", "--model", m, "--bits", 3, "--out", tmp_path / "Q", "--quiet"]) == 2
    assert err_line(capsys) == f"lrm-interp quantize: error: --model {m}: {cause}"
    assert run_cli(["quantize", "--model", m, "--bits", 3, "--method", "gptq", "--out", tmp_path / "Q", "--quiet"]) == 2
    assert err_line(capsys) == (
        "lrm-interp quantize: error: model.layers.0.self_attn.q_proj: its calibration inputs hold NaN or infinite "
        "values: the model's forward is broken (its config.json, e.g. a norm's epsilon at or below 0 or its rope "
        "scaling, or weights too large for its dtype); its Hessian cannot be used"
    )
    bits = ["bits", "--model", m, "--sensitivity", "hessian", "--budget", 3.25, "--out", tmp_path / "b.json"]
    assert run_cli(bits) == 2
    assert err_line(capsys) == f"lrm-interp bits: error: --model {m}: {cause}"
    assert run_cli(["toy", "eval", "--model", m, "--per-family", 1, "--quiet"]) == 2
    assert err_line(capsys) == f"lrm-interp toy eval: error: evaluate: {cause}"
    bench = ["bench", "run", "--model", m, "--tasks", "math", "--per-family", 2, "--max-new-tokens", 8]
    assert run_cli([*bench, "--out", tmp_path / "B", "--quiet"]) == 2
    assert err_line(capsys) == f"lrm-interp bench run: error: {m}: {cause}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_generation_stops_at_the_first_nan_logit(nan_forward_model: Any) -> None:
    """The second line of H31-NANFWD: a model whose logits turn NaN while it generates (past the
    check's 16 tokens) stops with an error naming the step and the batch, instead of greedy
    token 0 from NaN logits (NUL bytes). ``-inf`` (a token another processor masks) passes."""
    import lrm_interp
    from lrm_interp.evaluation.generation import finite_logits_guard, generate_samples

    model, tok = lrm_interp.load_model(nan_forward_model)
    with pytest.raises(NonFiniteError, match=r"^generate: the model's logits hold NaN or \+inf at new token 1 \("):
        generate_samples(model, tok, ["1 + 1 ="], max_new_tokens=4, keys=["k"])
    guard = finite_logits_guard("prompt 'k'", 5)[0]
    ids = torch.zeros(2, 7, dtype=torch.long)
    ok = torch.zeros(2, 10)
    ok[0, 3] = float("-inf")
    assert guard(ids, ok) is ok
    for bad in (float("nan"), float("inf")):
        scores = ok.clone()
        scores[1, 4] = bad
        with pytest.raises(NonFiniteError, match=r"at new token 3 \(batch of 2 sequence\(s\) from prompt 'k'\)"):
            guard(ids, scores)


def test_weights_too_large_for_their_dtype_are_refused_before_a_quantization(tmp_path: Any, capsys: Any) -> None:
    """The probe's other H31-NANFWD model: finite weights of 1e38 overflow in the forward; no norm
    epsilon is to blame, and the message says so."""
    from cli_run import err_line, run_cli

    import lrm_interp

    model, tok = lrm_interp.load_model("toy")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.fill_(1e38)
    model.save_pretrained(tmp_path / "M")
    tok.save_pretrained(tmp_path / "M")
    capsys.readouterr()
    assert run_cli(["quantize", "--model", tmp_path / "M", "--bits", 3, "--out", tmp_path / "Q", "--quiet"]) == 2
    err = err_line(capsys)
    assert "the model's forward gives NaN or infinite logits on a 16-token input although its weights are finite" in err
    assert err.endswith(
        "a broken config.json, or weights too large for its dtype; the model is broken; nothing was changed"
    )
    assert not (tmp_path / "Q").exists()


@pytest.mark.parametrize("compress", ["quantize_model_", "prune_model_"])
@pytest.mark.parametrize("pattern", ["", "  "])
def test_a_compression_refuses_an_empty_sites_pattern(compress: str, pattern: str) -> None:
    """H31-EMPTYSITES: ``quantize_model_(sites='')`` (an unset variable) matched every module and
    quantized 29 sites, ``lm_head`` included, where ``sites=None`` gives the 28 of the decoder
    layers and ``attribute(sites='')`` refuses (H7-API6). The same refusal, before any change."""
    import lrm_interp

    model = tiny_model("llama", seed=0)
    before = {n: p.clone() for n, p in model.named_parameters()}
    kw = {"bits": 3} if compress == "quantize_model_" else {"sparsity": 0.5, "method": "magnitude"}
    with pytest.raises(ValueError, match=rf"^sites regex '{pattern}' is empty: it would match every module; give a"):
        getattr(lrm_interp, compress)(model, sites=pattern, progress=False, **kw)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_the_quickstart_names_its_own_flags_to_resume_a_study(tmp_path: Any, capsys: Any) -> None:
    """H31-QSHINT: ``quickstart --out QS`` over a finished ``--tiny`` quickstart was refused with the
    study's hint, "rerun with the settings it records (without --tasks)" / "(--per-task 50)": flags
    ``quickstart`` does not have, and not the ``--tiny`` that made it. The hint names the
    quickstart's flags now; each rerun it offers resumes (nothing to compute: every file kept)."""
    from cli_run import err_line, folder_files, run_cli

    from lrm_interp.experiments.study import StudyResult

    qs = tmp_path / "QS"
    assert run_cli(["quickstart", "--tiny", "--bits", 4, "--out", qs, "--quiet"]) == 0
    capsys.readouterr()
    before = folder_files(qs)
    cases = {
        (): "differs in bits 4 ≠ 3, tasks [] ≠ ['math', 'logic', 'knowledge'], another model); rerun with the settings "
        "it records (--tiny --bits 4) to resume it",  # the model named too since H32-QSHINT2
        ("--eval", 0, "--bits", 4): "differs in per_task 50 ≠ 1, another model); rerun with the settings it records "
        "(--tiny --eval 150) to resume it",
        ("--tiny",): "differs in bits 4 ≠ 3); rerun with the settings it records (--tiny --bits 4) to resume it",
    }
    for extra, expected in cases.items():
        assert run_cli(["quickstart", *extra, "--out", qs, "--quiet"]) == 2
        assert f"error: {qs} holds another study ({expected}, or use another out folder" in err_line(capsys)
        assert folder_files(qs) == before
    rows = StudyResult.load(qs).rows
    assert run_cli(["quickstart", "--tiny", "--bits", 4, "--out", qs, "--quiet"]) == 0  # the hint's rerun resumes
    assert "(resumed: fp, uniform, magnitude, attribution, mixed)" in capsys.readouterr().out
    assert StudyResult.load(qs).rows == rows


def test_a_finished_study_rerun_loads_its_attributions(study: Any, tmp_path: Any, monkeypatch: Any) -> None:
    """A rerun of a finished study (its printed command, or the quickstart's) attributed the model
    and a new uniform copy again only to write the same tensors (the whole attribution stage). The folders
    that hold what ``study.json`` records are loaded (their result files untouched, nothing
    attributed); one that no longer does is attributed again."""
    import shutil

    from cli_run import TINY_STUDY, copied, folder_files

    from lrm_interp.experiments import study as study_module
    from lrm_interp.experiments.study import StudyResult, run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    results = ("attribution.json", "attribution.safetensors")
    before = {k: v for k, v in folder_files(out).items() if k.endswith(results)}
    real = study_module.attribute
    calls: list[str] = []

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(Path(kw["out_dir"]).name)
        return real(*args, **kw)

    monkeypatch.setattr(study_module, "attribute", counted)
    run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert calls == []
    assert {k: v for k, v in folder_files(out).items() if k.endswith(results)} == before
    assert StudyResult.load(out).rows == StudyResult.load(src).rows
    shutil.rmtree(out / "attribution_rtn3")
    run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert calls == ["attribution_rtn3"]
    assert StudyResult.load(out).rows == StudyResult.load(src).rows


# ----------------------------------------------------------------- the thirty-first probe (H32-…)
@pytest.mark.parametrize("pattern", ["mlp|", "^", "$", "(?:)", "x*", "(mlp)?", "|", r"\b", "."])
def test_a_sites_pattern_that_matches_every_module_is_refused(pattern: str) -> None:
    """H32-EMPTYMATCH: a regex matching the empty string (``'mlp|'``, ``'^'``…) or every name
    (``'\\b'``, ``'.'``) got past H31-EMPTYSITES and compressed 29 sites, ``lm_head`` included."""
    import lrm_interp
    from lrm_interp.attribution.config import AttributionConfig

    model = tiny_model("llama", seed=0)
    before = {n: p.clone() for n, p in model.named_parameters()}
    expected = r"matches the empty string, so every module name" if re_matches_empty(pattern) else "matches every"
    with pytest.raises(ValueError, match=rf"^sites regex {re_escape(repr(pattern))} {expected}"):
        lrm_interp.quantize_model_(model, bits=3, sites=pattern, progress=False)
    with pytest.raises(ValueError, match=rf"^sites regex {re_escape(repr(pattern))} {expected}"):
        lrm_interp.prune_model_(model, method="magnitude", sparsity=0.5, sites=pattern, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    if re_matches_empty(pattern):  # the config has no model: it refuses what it can tell without one
        with pytest.raises(ValueError, match="matches the empty string"):
            AttributionConfig(sites=pattern)
    assert len(lrm_interp.quantize_model_(model, bits=3, sites="mlp", progress=False).sites) == 6  # still works


def re_matches_empty(pattern: str) -> bool:
    import re

    return re.search(pattern, "") is not None


def re_escape(pattern: str) -> str:
    import re

    return re.escape(pattern)


def test_the_saliency_must_score_the_sites_of_the_masks(monkeypatch: Any) -> None:
    """H32-SALSITES: ``build_saliency(sites=[] / '' / [S, S])`` was accepted; ``build_masks`` used
    the saliency's sites instead of its own: 0 protected weights for an empty stream, the whole 2 %
    in the mlp modules, masks over every site for one asked for, a doubled site's share cut."""
    import lrm_interp as li

    model = tiny_model("llama", seed=0)
    sites, mlp = li.find_sites(model), li.find_sites(model, pattern="mlp")
    full = li.build_masks(sites, "global_top", 0.02, saliency=li.build_saliency("magnitude", model, sites))
    assert len(full) == len(sites)
    for bad, match in [
        ([], r"^build_saliency: sites is empty"),
        ("", r"^sites must be a list of Site .*got the empty string '' \(an unset environment variable\?\)"),
        ([sites[0], sites[0], sites[1]], r"^build_saliency: sites names a site more than once"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            li.build_saliency("magnitude", model, bad)
    with pytest.raises(ValueError, match=r"^build_masks: sites names a site more than once"):
        li.build_masks([sites[0], sites[0]], "global_top", 0.02, saliency=li.build_saliency("magnitude", model, sites))
    other = li.build_saliency("magnitude", model, mlp)
    with pytest.raises(
        ValueError, match=r"^build_masks: the saliency scores none for \d+ of the sites asked for \(first"
    ):
        li.build_masks(sites, "global_top", 0.02, saliency=other)
    with pytest.raises(
        ValueError, match=rf"^build_masks: the saliency scores {len(sites) - 1} site\(s\) not asked for"
    ):
        li.build_masks(sites[:1], "global_top", 0.02, saliency=li.build_saliency("magnitude", model, sites))

    def stream(ss: list[Any]) -> Any:  # a plain iterable: checked as it is read
        for s in ss:
            yield s, model.get_submodule(s.name).weight.detach().abs()

    with pytest.raises(ValueError, match=r"^build_masks: the saliency gives none for \d+ of the sites asked for"):
        li.build_masks(sites, "global_top", 0.02, saliency=stream(mlp))
    with pytest.raises(ValueError, match=rf"^build_masks: the saliency gives {sites[0].name} twice"):
        li.build_masks(sites[:2], "global_top", 0.02, saliency=stream([sites[0], sites[0]]))
    again = li.build_masks(sites, "global_top", 0.02, saliency=stream(sites))
    assert {k: int(v.mask.sum()) for k, v in again.items()} == {k: int(v.mask.sum()) for k, v in full.items()}


def test_an_empty_always_or_never_regex_is_refused(tmp_path: Any, capsys: Any) -> None:
    """H32-EMPTYFLAG: ``protect --always ''`` / ``--never ''`` (an unset variable) were taken as not
    given (exit 0), ``bits --behavior ''`` as the mean over behaviours; the Python API the same."""
    from cli_run import err_line, run_cli, toy_attribution

    import lrm_interp as li
    from lrm_interp.protect.policies import check_always_never

    gold, a = toy_attribution(tmp_path)
    capsys.readouterr()
    protect = ["protect", "--scores", a, "--model", "toy", "--data", gold, "--budget", 0.02]
    for flag in ("--always", "--never"):
        assert run_cli([*protect, flag, "", "--out", tmp_path / "m.safetensors", "--quiet"]) == 2
        assert err_line(capsys).endswith(
            f"error: {flag} '' is empty (an unset environment variable?): give a pattern, or leave {flag} out"
        )
    bits = ["bits", "--model", "toy", "--scores", a, "--budget", 3.5, "--behavior", "", "--out", tmp_path / "b.json"]
    assert run_cli(bits) == 2
    assert "behaviour '' not in this result" in err_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["gold.jsonl", "A"])
    sites = li.find_sites(tiny_model("llama", seed=0))
    with pytest.raises(ValueError, match=r"^always regex '' is empty \(an unset environment variable\?\): give a"):
        check_always_never(sites, 0.02, always="")
    res = li.Attribution.load(a)
    with pytest.raises(KeyError, match=r"behaviour '' not in this result"):
        res.site_ri("")


def test_load_model_refuses_a_model_or_tokenizer_of_another_type() -> None:
    """H32-APITYPES2: ``load_model('toy', tokenizer=5)`` returned ``(model, 5)``; ``load_model(5)``
    said "model directory 5 does not exist"."""
    import lrm_interp as li

    for kw, match in [
        ({"model": 5}, r"^load_model: model must be a model folder or alias .*got int 5"),
        ({"model": b"toy"}, r"^load_model: model must be a model folder or alias .*got bytes b'toy'"),
        ({"model": "toy", "tokenizer": 5}, r"^load_model: tokenizer must be a tokenizer, .*got int 5"),
    ]:
        with pytest.raises(TypeError, match=match):
            li.load_model(**kw)
