"""``lrm-interp protect`` (:func:`lrm_interp.protect.policies.build_masks` on a saliency from
:func:`lrm_interp.protect.registry.build_saliency`) and ``lrm-interp quantize``
(:func:`lrm_interp.compress.quant.quantize_model_`). Conventions: :mod:`lrm_interp.cli.common`."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from lrm_interp.cli.common import (
    PROG,
    CliError,
    FileOutputs,
    add_command,
    add_overwrite_flag,
    bits_int,
    check_paths,
    file_outputs,
    folder_output_lock,
    fraction,
    group_size_arg,
    load_attribution,
    load_model_quietly,
    model_input,
    nonneg_int,
    reading,
    refuse_alias_named_out,
    refuse_quantized_model,
    require_attribution_dir,
    require_model,
    require_path,
    seed_int,
)
from lrm_interp.protect.policies import POLICIES, ZeroScoreWarning, module_scores
from lrm_interp.protect.registry import SALIENCIES, SPAN_GRADS_SOURCES
from lrm_interp.protect.saliency import SPAN_GRADS

#: ``protect --budget`` unless given
DEFAULT_BUDGET = 0.02


class _Untyped:
    """Mixed into the default value of an option (:func:`untyped`): it reads as the plain value
    everywhere, and :func:`given` tells it from the same value typed on the command line, so a flag
    that does not apply is refused only when given (H8-PF, H8-EX2), the default never."""


_UNTYPED: dict[type, type] = {}


def untyped(value: Any) -> Any:
    """``value`` (a str, int, float or list) as an option default that :func:`given` says was not typed."""
    cls = type(value)
    if cls not in _UNTYPED:
        _UNTYPED[cls] = type(f"Untyped{cls.__name__.title()}", (_Untyped, cls), {})
    return _UNTYPED[cls](value)


def given(value: Any) -> bool:
    """Whether an option's value was typed on the command line (not ``None``, not an :func:`untyped` default)."""
    return value is not None and not isinstance(value, _Untyped)


#: ``protect --saliency`` / ``--span-grads`` unless given
DEFAULT_SALIENCY = untyped("attribution_ri")
DEFAULT_SPAN_GRADS = untyped("exact")
MODULE_POLICIES = ("final_mlp", "modules_by_score")  # need no per-weight saliency (and no model)
#: the grid of protect / quantize / bits / experiment protection unless told: asymmetric (min-max with a
#: zero-point), as every library function (``symmetric=False``)
SYMMETRIC_DEFAULT = False
#: where the command line takes each input a saliency needs (lrm_interp.protect.registry.SaliencyInputs)
NEEDS_FLAGS = {
    "encoded": "traces from --data",
    "module_importance": "module RI from --scores",
    "calib": "calibration text from --data (default: toy tasks)",
}

PROTECT_HELP = "build protection masks (weights kept in FP16) from attribution scores"
PROTECT_DESCRIPTION = (
    "Build protection masks (which weights stay in FP16 while the rest is quantized) from an attribution result "
    "and write them to one safetensors file, with the exact bits per weight. Module policies (final_mlp, "
    "modules_by_score) need only --scores. Per-weight policies (global_top, per_module_top) score every weight "
    "with --saliency and need --model; the attribution saliencies also need --data (annotated traces); "
    "activation and hessian read --data as calibration text (default: generated toy tasks)."
)
PROTECT_EXAMPLES = [
    f"{PROG} protect --scores runs/fp32 --model toy --data traces.jsonl --budget 0.02 --out masks.safetensors",
    f"{PROG} protect --scores runs/fp32 --model smollm2-135m --data traces.jsonl --span-grads window "
    "--budget 0.02 --out masks_window.safetensors",
    f"{PROG} protect --scores runs/fp32 --policy final_mlp --out final_mlp.safetensors",
    f"{PROG} protect --scores runs/fp32 --model toy --saliency magnitude --never 'layers\\.0\\.' --budget 0.03 "
    "--out magnitude.safetensors",
]
QUANTIZE_HELP = "mask-aware RTN/GPTQ fake quantization of a model"
QUANTIZE_DESCRIPTION = (
    "Mask-aware fake quantization (RTN or GPTQ) of every linear site of a model: protected weights (--masks, from "
    f"'{PROG} protect') are kept bit-exact and left out of the scale fit. Writes a normal checkpoint (loads with "
    "from_pretrained) plus lrm_interp_quantization.json (what was done) and lrm_interp_provenance.json (the "
    "model's compression record)."
)
QUANTIZE_EXAMPLES = [
    f"{PROG} quantize --model toy --bits 3 --masks masks.safetensors --out runs/toy-rtn3",
    f"{PROG} quantize --model toy --bits 3 --method gptq --calib traces.jsonl --masks masks.safetensors "
    "--out runs/toy-gptq3",
]


def add_symmetry_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--symmetric`` / ``--asymmetric``, a mutually exclusive pair setting ``symmetric``
    (default :data:`SYMMETRIC_DEFAULT`: asymmetric), on every command that quantizes or scores
    on a grid (protect, quantize, bits, experiment protection): scripts can say either."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--symmetric",
        dest="symmetric",
        action="store_true",
        default=SYMMETRIC_DEFAULT,
        help="symmetric grid: no zero-point, scale from max|w| (GPTQModel's sym=True); default: asymmetric",
    )
    g.add_argument(
        "--asymmetric",
        dest="symmetric",
        action="store_false",
        default=SYMMETRIC_DEFAULT,
        help="asymmetric grid: min-max with a zero-point per group (the default)",
    )


def _check_regex(flag: str, rx: str | None) -> None:
    """:class:`CliError` naming ``flag`` unless ``rx`` (if given) is not empty and compiles (a regex
    matching every site, ``'.*'``, keeps its meaning: ``--never`` is refused as leaving no site,
    ``--always`` warns that it protects everything)."""
    if rx is None:
        return
    try:
        re.compile(rx)
    except re.error as e:
        raise CliError(f"{flag} {rx!r}: invalid regular expression ({e})") from None
    if not rx:  # '' (an unset variable) was taken as not given (H32-EMPTYFLAG)
        raise CliError(f"{flag} '' is empty (an unset environment variable?): give a pattern, or leave {flag} out")


def _refuse_overlong(model, enc, a: argparse.Namespace) -> None:
    """Traces longer than the model's context cannot be scored (as ``attribute``'s default
    ``--overlong error``): refused before any scoring, counted and named."""
    from lrm_interp.model.forward import context_limit

    limit, where = context_limit(model)
    over = [(e.trace_id, len(e)) for e in enc if limit is not None and len(e) > limit]
    if over:
        shown = ", ".join(f"{tid} ({n} tokens)" for tid, n in over[:10]) + (
            f" and {len(over) - 10} more" if len(over) > 10 else ""
        )
        raise CliError(
            f"--data {a.data}: {len(over)} of {len(enc)} trace(s) are longer than the model's context of {limit} "
            f"positions ({where}): {shown}; --saliency {a.saliency} reads whole traces, so leave "
            "them out of --data (or shorten them)"
        )


def _refuse_unused_protect_flags(a: argparse.Namespace) -> None:
    """Flags the chosen policy / saliency would ignore are refused, one line naming them (H7-PR5:
    ``--policy final_mlp --budget 0.3`` protected 18.75 %; PR-a: ``--saliency magnitude`` took
    ``--data`` and ``--seed`` without a word), as ``--span-grads`` is refused there; H8-PF: the module
    policies ignored ``--saliency`` / ``--span-grads`` / ``--model``, the masks identical without them). Only
    a flag typed is refused (:func:`given`), never a default."""
    if a.policy == "final_mlp" and a.budget is not None:
        raise CliError(
            f"--budget is not used by --policy final_mlp: it protects the whole final-layer MLP modules and takes "
            f"no --budget (got --budget {a.budget}); leave --budget out, or use --policy modules_by_score"
        )
    if a.policy in MODULE_POLICIES:
        # per-weight flags were ignored: the masks were identical with or without them (H8-PF)
        scoring = [f"{f} {v}" for f, v in (("--saliency", a.saliency), ("--span-grads", a.span_grads)) if given(v)]
        if scoring:
            whole = "the whole final-layer MLP" if a.policy == "final_mlp" else "whole modules ranked by --scores"
            raise CliError(
                f"{' and '.join(scoring)}: --saliency / --span-grads score single weights; --policy {a.policy} "
                f"protects {whole}; leave them out, or use --policy global_top / per_module_top"
            )
        unused = [f for f, v in (("--model", a.model), ("--data", a.data), ("--seed", a.seed)) if v is not None]
        if unused:
            raise CliError(
                f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used by --policy {a.policy} "
                "(module policies read --scores only; no per-weight saliency is computed)"
            )
        return
    src = SALIENCIES[a.saliency]
    if given(a.span_grads) and a.saliency not in SPAN_GRADS_SOURCES:
        raise CliError(
            f"--span-grads {a.span_grads} applies to --saliency {', '.join(SPAN_GRADS_SOURCES)} "
            f"(behaviour-span gradients), not to --saliency {a.saliency}"
        )
    if a.data is not None and not {"encoded", "calib"} & set(src.needs):
        raise CliError(
            f"--data is not used by --saliency {a.saliency} (it reads the weights only; --data is the traces of "
            f"the attribution saliencies and the calibration text of activation / hessian)"
        )
    if a.seed is not None and a.saliency != "random":
        raise CliError(f"--seed is used by --saliency random only (got --saliency {a.saliency})")


def cmd_protect(a: argparse.Namespace) -> int:
    """``lrm-interp protect``: masks from ``--scores`` (and a saliency on ``--model``) → ``--out``."""
    # everything that can be checked without loading anything, first; --out never replaces an input
    check_paths(
        {"--out": a.out},
        {"--scores": a.scores, "--model": model_input(a.model), "--data": a.data},
        overwrite=a.overwrite,
        files=True,
        command="protect",
    )
    # --out published as one run's (as bits / parse do): a new one never over what another run wrote
    # meanwhile, an existing one (--overwrite) by one run at a time, under a lock beside it (H9-CC2)
    with file_outputs({"--out": a.out}, "protect") as outs:
        return _protect(a, outs)


def _protect(a: argparse.Namespace, outs: FileOutputs) -> int:
    """``protect`` once ``--out`` is checked and held (:func:`~lrm_interp.cli.common.file_outputs`)."""
    from lrm_interp.compress.quant import check_bits
    from lrm_interp.protect.encoding import bits_per_weight, save_masks
    from lrm_interp.protect.policies import build_masks, check_always_never

    check_bits(a.bits)
    group_size = group_size_arg(a.group_size)
    _refuse_unused_protect_flags(a)
    a.saliency, a.span_grads = str(a.saliency), str(a.span_grads)  # plain names from here on
    if a.budget is None:
        a.budget = DEFAULT_BUDGET
    if a.seed is None:
        a.seed = 0
    if not 0.0 <= a.budget <= 1.0:
        raise CliError(f"--budget must be a fraction of the weights in [0, 1], got {a.budget}")
    _check_regex("--always", a.always)
    _check_regex("--never", a.never)
    require_attribution_dir(a.scores, "--scores")
    per_weight = a.policy not in MODULE_POLICIES
    src = SALIENCIES[a.saliency]
    if per_weight:
        if a.model is None:
            raise CliError(f"--policy {a.policy} scores single weights: it needs --model")
        require_model(a.model)  # --span-grads of another saliency: refused above (_refuse_unused_protect_flags)
        if "encoded" in src.needs and a.data is None:
            raise CliError(
                f"--saliency {a.saliency} needs --data (annotated traces: a JSONL file or paper-layout directory)"
            )
    data = None if a.data is None else require_path(a.data, "--data")
    attr = load_attribution(a.scores, "--scores")
    sites = list(attr.sites)
    # all-zero scores ranked the modules from no information (H8-NAN2): refused before any work;
    # a behaviour whose row alone is zero is named once, here (the library calls below, silenced)
    if a.policy == "modules_by_score" or (per_weight and "module_importance" in src.needs):
        use = "--policy modules_by_score ranks" if not per_weight else f"--saliency {a.saliency} weighs"
        try:
            module_scores(attr, source=str(a.scores))
        except ValueError as e:
            raise CliError(f"{e} ({use} the modules by these scores)") from None
    # --never matching every site with --budget > 0 is refused, --always sites above the budget are
    # named, both before any saliency is computed (H5-R8 / R9)
    try:
        over = check_always_never(sites, a.budget, a.always, a.never, policy=a.policy)
    except ValueError as e:
        raise CliError(
            str(e)
            .replace("never regex", "--never")
            .replace("budget ", "--budget ", 1)
            .replace("budget=0", "--budget 0")
        ) from None
    if over is not None:
        print(
            f"{PROG} protect: warning: "
            + over.replace("always regex", "--always", 1).replace("the budget", "--budget", 1),
            file=sys.stderr,
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ZeroScoreWarning)  # said once, above
        if not per_weight:
            masks = build_masks(
                sites, a.policy, a.budget, scores=attr, always=a.always, never=a.never, warn_budget=False
            )
        else:
            from lrm_interp.compress.calibration import calibration_ids
            from lrm_interp.data.loading import load_dataset
            from lrm_interp.data.tokens import encode_trace
            from lrm_interp.model.sites import resolve_sites
            from lrm_interp.protect.registry import build_saliency

            model, tok = load_model_quietly(a.model)
            sites = resolve_sites(model, [s.name for s in sites])
            with reading(data, "--data") if data is not None else contextlib.nullcontext():
                # "encoded" needs --data (checked above)
                enc = [encode_trace(tok, t) for t in load_dataset(cast(Path, data))] if "encoded" in src.needs else None
                calib = calibration_ids(tok, data) if "calib" in src.needs else None
            from lrm_interp.evaluation.generation import check_token_ids

            try:  # a tokenizer that is not the model's said "index out of range in self" (H7-TE)
                check_token_ids(model, tok, [(e.trace_id, e.input_ids) for e in enc or ()])
                if calib is not None:
                    check_token_ids(model, tok, [(f"calibration text ({a.data or 'toy tasks'})", calib)])
            except ValueError as e:
                raise CliError(f"--model {a.model}: {e}") from None
            if enc is not None:
                _refuse_overlong(model, enc, a)
            stream = build_saliency(
                a.saliency,
                model,
                sites,
                encoded=enc,
                behaviors=list(attr.behaviors),
                calib=calib,
                bits=a.bits,
                group_size=group_size,
                symmetric=a.symmetric,
                seed=a.seed,
                module_importance=attr,
                span_grads=a.span_grads,
                progress=not a.quiet,
            )
            # build_masks: `always` modules count against a global budget, so the total stays exact
            masks = build_masks(
                sites, a.policy, a.budget, saliency=stream, always=a.always, never=a.never, warn_budget=False
            )
    bpw = bits_per_weight(masks, sites, bits=a.bits, group_size=group_size, symmetric=a.symmetric)
    metadata = {
        "policy": a.policy,
        "saliency": a.saliency if per_weight else None,
        "span_grads": a.span_grads if per_weight and a.saliency in SPAN_GRADS_SOURCES else None,
        "budget": a.budget,
        "bits": a.bits,
        "group_size": group_size,
        "symmetric": a.symmetric,
        "scores": str(a.scores),
        "bits_per_weight": {k: v for k, v in bpw.items() if k != "encodings"},
    }
    # to a temporary file beside --out, then published (FileOutputs.write decides how)
    outs.write("--out", lambda p: save_masks(masks, p, metadata=metadata))
    print(
        f"wrote {a.out}: {sum(m.n_protected for m in masks.values())} protected weights in {len(masks)} "
        f"sites ({100 * bpw['protected_fraction']:.2f}%), {bpw['bpw']:.3f} bits/weight at {a.bits}-bit "
        f"group {group_size or 'per channel'} (index {bpw['index_bits']:.3f}, FP16 values {bpw['value_bits']:.3f})"
    )
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    """``lrm-interp quantize``: fake-quantize ``--model`` honouring ``--masks``; checkpoint + records → ``--out``.
    An existing ``--out`` is held from the checks to the swap by :func:`folder_output_lock` (two
    ``--overwrite`` runs both printed "wrote" and the first result was lost, H11-QCC); the checks run
    again under it (a run that finished meanwhile is seen)."""
    _quantize_checks(a)  # before the lock: a bad --out is named by its check, not by the lock
    with folder_output_lock("--out", a.out, "quantize"):
        return _quantize(a)


#: why ``quantize`` refuses a model that is already quantized (:func:`refuse_quantized_model`)
REQUANTIZED = (
    "quantizing it again puts a second grid on the first: the weights keep the first grid's values while "
    "the new record names the new bits"
)


def _quantize_checks(a: argparse.Namespace) -> Path:
    """``quantize``'s checks of ``--out`` (the resolved folder): :func:`lrm_interp._io.check_out_dir`,
    :func:`check_paths` and :func:`_refuse_foreign_files`."""
    from lrm_interp._io import check_out_dir
    from lrm_interp.compress.quant import check_bits

    check_bits(a.bits)
    group_size_arg(a.group_size)
    require_model(a.model)
    # the folder --model reads (an alias's folder, '~' expanded): --out may never replace it
    src = model_input(a.model)
    sources = () if src is None else (Path(src).expanduser(),)
    try:
        out = check_out_dir(Path(a.out).expanduser(), overwrite=a.overwrite, sources=sources)
    except ValueError as e:
        raise CliError(str(e)) from None
    # --out is replaced whole: it may neither be nor contain nor lie inside another input (--overwrite or not)
    check_paths({"--out": a.out}, {"--masks": a.masks, "--calib": a.calib}, replaced_whole=True, own="quantize")
    refuse_alias_named_out(a.out)  # `--out toy` here: every --model toy ambiguous (H30-ALIASOUT)
    _refuse_foreign_files(out)
    if not a.requantize:  # after the output checks: an --out over its own --model is named as that first
        refuse_quantized_model(a.model, REQUANTIZED + " (or pass --requantize to stack them on purpose)")
    return out


def _quantize(a: argparse.Namespace) -> int:
    """The body of :func:`cmd_quantize`, under its lock."""
    import shutil

    from lrm_interp._io import make_temp_dir, naming_destination, publish_dir
    from lrm_interp.compress.calibration import calibration_ids
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.compress.quant.apply import MaskGridWarning
    from lrm_interp.model.forward import check_finite_forward
    from lrm_interp.protect.encoding import grid_mismatch, load_masks, masks_grid

    group_size = group_size_arg(a.group_size)
    out = _quantize_checks(a)  # again, under the lock
    masks_path = None if a.masks is None else require_path(a.masks, "--masks", kind="file")
    calib_path = None if a.calib is None else require_path(a.calib, "--calib")
    if calib_path is not None and a.method != "gptq":
        raise CliError(f"--calib is used by --method gptq only (got --method {a.method})")
    masks: Mapping[str, Any]
    masks_meta: dict[str, Any] = {}
    if masks_path is not None:
        with reading(masks_path, "--masks"):
            masks, masks_meta = load_masks(masks_path)
        # masks chosen for another grid are used, with a word (magnitude masks fit any grid)
        mismatch = grid_mismatch(masks_meta, a.bits, group_size, a.symmetric)
        if mismatch:
            print(f"{PROG} quantize: warning: --masks {a.masks}: {mismatch}", file=sys.stderr)
    else:
        masks = {}
    a.masks_grid = masks_grid(masks_meta)
    model, tok = load_model_quietly(a.model)
    calib = None
    if a.method == "gptq":
        with reading(calib_path, "--calib") if calib_path is not None else contextlib.nullcontext():
            calib = calibration_ids(tok, calib_path)
        from lrm_interp.evaluation.generation import check_token_ids

        try:  # a tokenizer that is not the model's said "index out of range in self" (H7-TE)
            check_token_ids(model, tok, [(f"calibration text ({a.calib or 'toy tasks'})", calib)])
        except ValueError as e:
            raise CliError(f"--model {a.model}: {e}") from None
    with warnings.catch_warnings():  # printed above as this command's one-line warning
        warnings.simplefilter("ignore", MaskGridWarning)
        rep = quantize_model_(
            model,
            bits=a.bits,
            group_size=group_size,
            method=a.method,
            masks=masks,
            calib=calib,
            symmetric=a.symmetric,
            progress=not a.quiet,
            requantize=a.requantize,
        )
    check_finite_forward(model, f"--model {a.model}")  # finite weights, NaN logits: a broken copy (H31-NANFWD)
    tmp = make_temp_dir(out)  # the permissions of a plain mkdir, not mkdtemp's 0700
    try:
        with naming_destination(out, tmp):  # a failed write names --out, not .OUT.xxxx.tmp
            _write_quantized(model, tok, rep, masks, a, group_size, tmp)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = json.loads((out / "lrm_interp_quantization.json").read_text())
    print(
        f"wrote {out} (fake-quantized weights, loads with from_pretrained): {rep.n_sites} sites, "
        f"{rep.n_protected} protected weights, {info['bits_per_weight']:.3f} bits/weight"
    )
    return 0


#: names a quantize result holds (save_pretrained's checkpoint and tokenizer files, the records):
#: an earlier result that records no file list ("files") is checked against these
_QUANTIZE_NAMES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "lrm_interp_provenance.json",
    "lrm_interp_quantization.json",
)


def _refuse_foreign_files(out: Path) -> None:
    """``quantize --overwrite`` replaces ``--out`` whole (one atomic swap of folders): refused, before
    any work, when the earlier result there holds files quantize did not write (a user's notes, a
    subfolder), naming them; they used to be deleted with it (H5-Q6)."""
    import fnmatch

    if not out.is_dir():
        return
    rec = out / "lrm_interp_quantization.json"
    wrote: list[str] | None = None
    try:
        files = json.loads(rec.read_text(encoding="utf-8")).get("files") if rec.is_file() else None
        if isinstance(files, list) and all(isinstance(f, str) for f in files):
            wrote = files
    except (OSError, ValueError, AttributeError):
        wrote = None
    foreign = []
    for e in sorted(out.iterdir(), key=lambda p: p.name):
        if e.is_dir() and not e.is_symlink():
            foreign.append(e.name + "/")
        elif wrote is not None and e.name not in wrote:
            foreign.append(e.name)
        elif wrote is None and not any(fnmatch.fnmatchcase(e.name, pat) for pat in _QUANTIZE_NAMES):
            foreign.append(e.name)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise CliError(
            f"--out {out} holds files quantize did not write ({shown}): --overwrite replaces the folder whole "
            "and would delete them; move them out, or choose another folder"
        )


def _write_quantized(model, tok, rep, masks, a: argparse.Namespace, group_size: int | None, out: Path) -> None:
    """Checkpoint, tokenizer, provenance record and ``lrm_interp_quantization.json`` into ``out``."""
    from lrm_interp._io import atomic_write_text
    from lrm_interp.model.provenance import plain_permissions, save_record, with_record_checksum
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.encoding import bits_per_weight

    with plain_permissions(out):  # save_pretrained leaves model.safetensors at 0600 (H27-PERM)
        model.save_pretrained(out)
        tok.save_pretrained(out)
    save_record(model, out)  # the compression record next to the checkpoint (lrm_interp_provenance.json)
    info = rep.to_dict() | {
        "bits_per_weight": bits_per_weight(
            masks, find_sites(model), bits=a.bits, group_size=group_size, symmetric=a.symmetric
        )["bpw"],
        "masks": a.masks,
        # the grid the masks were computed for (None: no masks, or masks that record none)
        "masks_grid": getattr(a, "masks_grid", None),
        "source_model": str(a.model),
        # the calibration the Hessians came from ({"rows", "tokens"}, padding excluded; None: RTN, H11-CAL1)
        "calibration": getattr(rep, "calibration", None),
        "calib": getattr(a, "calib", None),
        # every file of this result (a later --overwrite replaces only a folder holding these)
        "files": sorted({p.name for p in out.iterdir()} | {"lrm_interp_quantization.json"}),
    }
    info.pop("sites", None)
    # with its record_sha256: an edited record is refused where it is read (H27-QREC)
    atomic_write_text(out / "lrm_interp_quantization.json", json.dumps(with_record_checksum(info), indent=2))


def register(sub) -> None:
    """Add the ``protect`` and ``quantize`` subcommands to ``sub`` (an argparse subparsers object)."""
    p = add_command(sub, "protect", help=PROTECT_HELP, description=PROTECT_DESCRIPTION, examples=PROTECT_EXAMPLES)
    assert p.epilog is not None  # add_command writes the examples there
    p.epilog += "\n\nsaliencies (--saliency):\n" + "\n".join(
        f"  {n:15s} {s.label}" + "".join(f"; {NEEDS_FLAGS[k]}" for k in s.needs if k in NEEDS_FLAGS)
        for n, s in SALIENCIES.items()
    )
    p.add_argument(
        "--scores", required=True, metavar="DIR", help=f"an attribution result folder (from '{PROG} attribute')"
    )
    p.add_argument(
        "--budget",
        type=fraction,
        default=None,
        metavar="X",
        help="fraction of the linear weights to protect, in [0, 1] (0: an empty mask, the no-protection "
        f"baseline; default {DEFAULT_BUDGET}); not with --policy final_mlp, which protects whole modules",
    )
    p.add_argument(
        "--policy",
        choices=POLICIES,
        default="global_top",
        help="how the protected weights are chosen (global_top: the most salient weights over all sites)",
    )
    p.add_argument(
        "--saliency",
        choices=list(SALIENCIES),
        default=DEFAULT_SALIENCY,
        help="per-weight saliency of global_top / per_module_top (list below); not with the module policies",
    )
    p.add_argument(
        "--span-grads",
        choices=SPAN_GRADS,
        default=DEFAULT_SPAN_GRADS,
        help="behaviour-span gradients of --saliency "
        + "/".join(SPAN_GRADS_SOURCES)
        + ": exact (default; sum over spans of |dL(s)/dW|, one forward per trace and one backward per span), "
        "trace (approximate: |sum of a trace's span gradients| per behaviour, one backward per trace and "
        "behaviour), window (approximate: each span's window against the cached prefix, the prefix's "
        "keys/values held constant); measured errors in docs/protection.md",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="DIR|ALIAS",
        help="model folder or alias, e.g. toy (per-weight policies only: they need it)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="annotated traces, JSONL file or paper-layout folder (attribution saliencies; calibration "
        "text of activation/hessian, else generated toy tasks)",
    )
    p.add_argument(
        "--bits",
        type=bits_int,
        default=3,
        metavar="N",
        help="target quantization bits, 2..8 (saliency grid and bits/weight)",
    )
    p.add_argument(
        "--group-size",
        type=nonneg_int,
        default=128,
        metavar="N",
        help="quantization group size in input columns (0 = per channel)",
    )
    add_symmetry_flags(p)
    p.add_argument(
        "--always", default=None, metavar="REGEX", help="sites always protected whole (they count against the budget)"
    )
    p.add_argument("--never", default=None, metavar="REGEX", help="sites never protected (wins over --always)")
    p.add_argument(
        "--seed", type=seed_int, default=None, metavar="N", help="seed of --saliency random (>= 0; default 0)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, metavar="FILE", help="output mask file (.safetensors)")
    add_overwrite_flag(p)
    p.set_defaults(fn=cmd_protect)

    q = add_command(sub, "quantize", help=QUANTIZE_HELP, description=QUANTIZE_DESCRIPTION, examples=QUANTIZE_EXAMPLES)
    q.add_argument("--model", required=True, metavar="DIR|ALIAS", help="model folder or alias, e.g. toy")
    q.add_argument("--bits", type=bits_int, required=True, metavar="N", help="quantization bits, 2..8")
    q.add_argument(
        "--group-size",
        type=nonneg_int,
        default=128,
        metavar="N",
        help="quantization group size in input columns (0 = per channel)",
    )
    q.add_argument(
        "--method",
        choices=["rtn", "gptq"],
        default="rtn",
        help="rtn (round to nearest) or gptq (error feedback from calibration Hessians)",
    )
    q.add_argument("--masks", default=None, metavar="FILE", help=f"protection masks from '{PROG} protect'")
    q.add_argument(
        "--calib",
        default=None,
        metavar="PATH",
        help="GPTQ calibration traces, JSONL file or paper-layout folder (default: generated toy tasks)",
    )
    add_symmetry_flags(q)
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output checkpoint folder (written whole or not at all; never the --model folder)",
    )
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    q.add_argument(
        "--requantize",
        action="store_true",
        help="quantize a --model that is already quantized (a 'quantize' result), stacking the grids on purpose "
        "(refused by default: the weights would keep the first grid's values while the record names --bits)",
    )
    q.set_defaults(fn=cmd_quantize)
