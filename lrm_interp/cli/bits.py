"""``lrm-interp bits``: module-level mixed precision (:func:`lrm_interp.protect.bit_allocation.allocate_bits`)
and its toolchain configs (:func:`lrm_interp.protect.exports.gptqmodel_dynamic_bits`,
:func:`~lrm_interp.protect.exports.llmcompressor_config_groups`). Conventions: :mod:`lrm_interp.cli.common`."""

from __future__ import annotations

import argparse
import contextlib
import json

from lrm_interp.cli.common import (
    PROG,
    Accumulate,
    CliError,
    FileOutputs,
    add_command,
    add_overwrite_flag,
    bits_int,
    check_paths,
    file_outputs,
    group_size_arg,
    load_attribution,
    load_model_quietly,
    model_input,
    nonneg_int,
    positive_float,
    reading,
    refuse_quantized_model,
    require_attribution_dir,
    require_model,
    require_path,
)
from lrm_interp.cli.protect import add_symmetry_flags

SENSITIVITIES = ("attribution", "hessian", "none")
BIT_CHOICES = (2, 3, 4, 5, 6, 7, 8, 16)
#: the writers of the toolchain configs (``lrm_interp._io.FILE_RESULT_FORMATS``): never over a bits
#: allocation (H11-GQB) nor traces (H17-TRO); an earlier config of their own with --overwrite
CONFIG_WRITERS = {"--gptqmodel": "bits --gptqmodel", "--llmcompressor": "bits --llmcompressor"}
#: ``--default-bits`` unless given (with ``--gptqmodel``)
DEFAULT_BITS = 4
HELP = "allocate bits per module (2/3/4/8/16) under a bits-per-weight budget; GPTQModel/llm-compressor configs"
DESCRIPTION = (
    "Module-level mixed precision: every linear module gets one bit width from --choices so that the average "
    "storage (codes + group scales/zeros; 16 = FP16) is at most --budget bits per weight, minimising the modelled "
    "loss increase sensitivity x RTN error (docs/protection.md). --sensitivity attribution uses the modules' "
    "relative importance from --scores; hessian the mean squared input tr(H)/in from --calib (default: toy "
    "tasks); none weights every module equally. Writes the allocation (JSON) and, on request, a GPTQModel "
    "'dynamic' and an llm-compressor 'config_groups' file."
)
EXAMPLES = [
    f"{PROG} bits --model toy --scores runs/fp32 --budget 3.25 --out bits.json --llmcompressor groups.json",
    f"{PROG} bits --model toy --sensitivity hessian --budget 3.25 --out bits_hessian.json "
    "--gptqmodel dynamic.json --default-bits 3",
]


def cmd_bits(a: argparse.Namespace) -> int:
    outputs = {"--out": a.out, "--gptqmodel": a.gptqmodel, "--llmcompressor": a.llmcompressor}
    check_paths(
        outputs,
        {"--model": model_input(a.model), "--scores": a.scores, "--calib": a.calib},
        overwrite=a.overwrite,
        files=True,
        command="bits",
        writers=CONFIG_WRITERS,
    )
    # each file published as one run's: a new one never over what another run wrote meanwhile, an
    # existing one (--overwrite) by one run at a time (two runs both printed "wrote", H9-CC2)
    # --gptqmodel / --llmcompressor write toolchain configs: never over a bits allocation (H11-GQB)
    with file_outputs(outputs, "bits", writers=CONFIG_WRITERS) as outs:
        return _bits(a, outs)


def _bits(a: argparse.Namespace, outs: FileOutputs) -> int:
    """``bits`` once its outputs are checked and held (:func:`~lrm_interp.cli.common.file_outputs`)."""
    from lrm_interp._io import atomic_write_text
    from lrm_interp.model.forward import check_finite_forward
    from lrm_interp.model.provenance import WeightsMismatchError, check_same_weights
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import exports
    from lrm_interp.protect.bit_allocation import allocate_bits, hessian_sensitivity, quantization_errors
    from lrm_interp.protect.policies import module_scores

    group_size = group_size_arg(a.group_size)
    if a.sensitivity == "attribution" and a.scores is None:
        raise CliError("--sensitivity attribution needs --scores DIR (an attribution result folder)")
    if a.sensitivity != "attribution" and a.scores is not None:
        raise CliError(f"--scores is used by --sensitivity attribution only (got --sensitivity {a.sensitivity})")
    if a.calib is not None and a.sensitivity != "hessian":
        raise CliError(f"--calib is used by --sensitivity hessian only (got --sensitivity {a.sensitivity})")
    if a.behavior is not None and a.sensitivity != "attribution":  # was ignored silently (H6-B9)
        raise CliError(
            f"--behavior is used by --sensitivity attribution only (a behaviour's RI from --scores; got "
            f"--sensitivity {a.sensitivity})"
        )
    if a.default_bits is not None and not a.gptqmodel:  # was ignored silently (H7-BI1)
        raise CliError(
            f"--default-bits is used with --gptqmodel only (the bits of the GPTQModel config its dynamic entries "
            f"override; got --default-bits {a.default_bits} without --gptqmodel)"
        )
    bad = [b for b in a.choices if b not in BIT_CHOICES]
    if bad:
        raise CliError(f"--choices: bit widths must be 2..8 or 16, got {bad}")
    require_model(a.model)
    refuse_quantized_model(
        a.model,
        "an allocation's bits are meant for the full-precision weights (its sensitivities and bits per weight "
        "would be those of the quantized copy, and applying it quantizes that copy again)",
    )
    if a.scores is not None:
        require_attribution_dir(a.scores, "--scores")
    calib_path = None if a.calib is None else require_path(a.calib, "--calib")
    ri: dict[str, float] | None = None
    if a.sensitivity == "attribution":
        attr = load_attribution(a.scores, "--scores")
        try:  # an all-zero row allocated bits from no information (H8-NAN2): refused before the model loads
            ri = module_scores(attr, a.behavior, source=str(a.scores), purpose="allocate")
        except ValueError as e:
            hint = "; give another --behavior, or leave it out (the mean over behaviours)" if a.behavior else ""
            raise CliError(f"{e}{hint}") from None
    model, tok = load_model_quietly(a.model)
    check_finite_forward(model, f"--model {a.model}")  # bits for a model of NaN logits (H31-NANFWD)
    sites = find_sites(model)
    sens = None
    fingerprint: str | None = None  # the model's weights fingerprint once computed (recorded in the allocation)
    if a.sensitivity == "attribution":
        assert ri is not None
        try:  # as protect does (protect/saliency.py): one model's scores rank another's modules wrongly
            fingerprint = check_same_weights(
                attr,
                model,
                what=f"--scores {a.scores}",
                hint="scores of one model rank another model's modules wrongly; attribute --model first",
            )
        except WeightsMismatchError as e:
            raise CliError(str(e)) from None
        missing = [s.name for s in sites if s.name not in ri]
        if missing:
            raise CliError(f"--scores has no score for {len(missing)} site(s) of --model, e.g. {missing[0]}")
        sens = ri
    elif a.sensitivity == "hessian":
        from lrm_interp.compress.calibration import calibration_ids, layer_hessians

        with reading(calib_path, "--calib") if calib_path is not None else contextlib.nullcontext():
            calib = calibration_ids(tok, calib_path)
        from lrm_interp.evaluation.generation import check_token_ids

        try:  # a tokenizer that is not the model's said "index out of range in self" (H7-TE)
            check_token_ids(model, tok, [(f"calibration text ({a.calib or 'toy tasks'})", calib)])
        except ValueError as e:
            raise CliError(f"--model {a.model}: {e}") from None
        H = {}
        for _, hs in layer_hessians(model, sites, calib, sequential=False, progress=not a.quiet):
            H.update(hs)
        sens = hessian_sensitivity(H)
    errors = quantization_errors(  # they record the model (its fingerprint), and so will the allocation
        model,
        sites,
        a.choices,
        group_size=group_size,
        symmetric=a.symmetric,
        relative=a.sensitivity == "attribution",
        fingerprint=fingerprint,
    )
    try:
        alloc = allocate_bits(
            sites,
            errors,
            sens,
            a.budget,
            choices=a.choices,
            group_size=group_size,
            symmetric=a.symmetric,
            name=a.sensitivity,
        )
    except ValueError as e:
        raise CliError(f"--budget {a.budget}: {e}") from None
    outs.write("--out", alloc.save)
    wrote = [a.out]
    qcfg = ""
    if a.gptqmodel:
        default_bits = DEFAULT_BITS if a.default_bits is None else a.default_bits
        dynamic = json.dumps(exports.gptqmodel_dynamic_bits(alloc, default_bits=default_bits), indent=1)
        # the grid every module was costed on, said (sym and the default modules' grid were nowhere, H13-GQS)
        base = exports.gptqmodel_quantize_config(alloc, default_bits=default_bits)
        qcfg = (
            f"{a.gptqmodel} assumes QuantizeConfig({', '.join(f'{k}={v}' for k, v in base.items())}, "
            f"dynamic=...): each of its entries sets the module's bits, group_size and sym"
        )
        outs.write("--gptqmodel", lambda p: atomic_write_text(p, dynamic))
        wrote.append(a.gptqmodel)
    if a.llmcompressor:
        groups = json.dumps(exports.llmcompressor_config_groups(alloc), indent=1)
        outs.write("--llmcompressor", lambda p: atomic_write_text(p, groups))
        wrote.append(a.llmcompressor)
    counts = ", ".join(f"{n} at {b} bits" for b, n in alloc.counts().items())
    print(f"{alloc.bpw:.4f} bits/weight (budget {a.budget}): {counts}; wrote {', '.join(map(str, wrote))}")
    if qcfg:
        print(qcfg)
    return 0


def register(sub) -> None:
    """Add the ``bits`` subcommand to ``sub``."""
    p = add_command(sub, "bits", help=HELP, description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument(
        "--model", required=True, metavar="DIR|ALIAS", help="model folder or alias (its weights set the RTN errors)"
    )
    p.add_argument(
        "--budget",
        type=positive_float,
        required=True,
        metavar="BPW",
        help="average storage bits per weight allowed (codes + scales/zeros + FP16 modules)",
    )
    p.add_argument(
        "--sensitivity",
        choices=SENSITIVITIES,
        default="attribution",
        help="what weights each module's error: attribution RI (--scores), hessian tr(H)/in (--calib), or none",
    )
    p.add_argument("--scores", default=None, metavar="DIR", help=f"attribution result folder (from '{PROG} attribute')")
    p.add_argument(
        "--behavior", default=None, metavar="NAME", help="use this behaviour's RI (default: the mean over behaviours)"
    )
    p.add_argument(
        "--calib",
        default=None,
        metavar="PATH",
        help="calibration traces for --sensitivity hessian, JSONL or paper-layout folder "
        "(default: generated toy tasks)",
    )
    p.add_argument(
        "--choices",
        type=int,
        nargs="+",
        action=Accumulate,
        choices=BIT_CHOICES,
        default=[2, 3, 4, 8, 16],
        metavar="B",
        help="bit widths a module may get, 2..8 or 16 (16 = kept in FP16)",
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
        "--out", required=True, metavar="FILE", help="allocation file (JSON, lrm_interp.bits/2; records the model)"
    )
    p.add_argument(
        "--gptqmodel",
        default=None,
        metavar="FILE",
        help="also write GPTQModel QuantizeConfig(dynamic=...) entries (JSON): bits, group_size and sym of every "
        "module (-1 = per channel), FP16 modules skipped",
    )
    p.add_argument(
        "--default-bits",
        type=bits_int,
        default=None,
        metavar="B",
        help=f"with --gptqmodel: the bits of the GPTQModel QuantizeConfig the file assumes (printed; every "
        f"module's entry sets its own bits, group_size and sym; default: {DEFAULT_BITS})",
    )
    p.add_argument(
        "--llmcompressor", default=None, metavar="FILE", help="also write llm-compressor config_groups + ignore (JSON)"
    )
    add_overwrite_flag(p, "--out, --gptqmodel and --llmcompressor")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_bits)
