"""``lrm-interp faithfulness``: :func:`lrm_interp.attribution.faithfulness.atp_faithfulness` — the
package's attribution-patching scores against real activation patching, per behaviour (Spearman,
top-k overlap). Conventions: :mod:`lrm_interp.cli.common`."""

from __future__ import annotations

import argparse
import contextlib
import sys

from lrm_interp.cli.common import (
    PROG,
    Accumulate,
    CliError,
    add_command,
    add_dataclass_args,
    dataclass_from_args,
    float_arg,
    folder_output_lock,
    load_model_quietly,
    model_input,
    positive_int,
    reading,
    require_model,
    require_path,
    seed_int,
)

HELP = "check attribution patching against real activation patching (Spearman, top-k overlap per behaviour)"
DESCRIPTION = (
    "Is attribution patching faithful on this model? For a sample of behaviour spans (at most --max-spans "
    "per behaviour, seeded), patch each linear site's output on the span's target positions by alpha x u_hat "
    "(the package's steering vector), measure the change of the span's loss, and compare the sites' ranking "
    "with the package's AtP scores on the same spans: Spearman rho and top-k overlap per (alpha, behaviour), "
    "plus |AtP - real| summaries. alpha = 1 is the full-size patch the scores describe. The prefix of each "
    "span runs once (KV cache); only the span's tokens are re-run per site. Takes the inputs of "
    f"'{PROG} attribute' (model, traces, attribution settings). Writes faithfulness.json (with provenance and "
    "span counts), faithfulness.csv and sites.csv to --out; an existing result is replaced only with --overwrite."
)
EXAMPLES = [
    f"{PROG} faithfulness --model toy --data traces.jsonl --out faith",
    f"{PROG} faithfulness --model smollm2-135m --data r1_gpt4o_dev/ --max-tokens 2048 --overlong truncate "
    "--max-spans 5 --alpha 0.1 1 --out faith_r1",
]


def cmd_faithfulness(a: argparse.Namespace) -> int:
    from lrm_interp._io import check_out_dir
    from lrm_interp.attribution.config import AttributionConfig
    from lrm_interp.attribution.faithfulness import FILES, atp_faithfulness, check_alphas
    from lrm_interp.data.loading import load_dataset

    with contextlib.ExitStack() as stack:
        # everything that can be checked without loading anything, first
        require_model(a.model)
        data = require_path(a.data, "--data")
        cfg = dataclass_from_args(AttributionConfig, a)  # validates every setting (regex included)
        if cfg.method != "attribution":
            raise CliError(f"--method {cfg.method}: the check compares attribution patching; use --method attribution")
        if a.seed is not None and a.max_spans is None:  # was ignored silently (H7-F3)
            raise CliError(
                f"--seed is used with --max-spans only (it draws the --max-spans sample of spans; without it every "
                f"span is used; got --seed {a.seed})"
            )
        try:
            alphas = check_alphas(a.alpha)
            src = model_input(a.model)
            check_out_dir(
                a.out, overwrite=a.overwrite, sources=(data,) if src is None else (data, src), marker=FILES[0]
            )
        except ValueError as e:
            raise CliError(str(e).replace("alpha must", "--alpha must")) from None
        # an existing --out is held to the last write: two --overwrite runs both printed "wrote" (H11-QCC)
        stack.enter_context(folder_output_lock("--out", a.out, "faithfulness"))
        with reading(data, "--data"):
            ds = load_dataset(data)
        if len(ds) == 0:
            raise CliError(f"--data {data}: no traces")
        model, tok = load_model_quietly(a.model)
        from lrm_interp.model.sites import resolve_sites

        try:
            n_sites = len(resolve_sites(model, cfg.sites))
        except (ValueError, KeyError) as e:
            raise CliError(f"--sites: {e.args[0]}") from None
        if n_sites < 2:  # "use a --top-k below 1" advised an impossible value (H7-F5)
            raise CliError(
                f"faithfulness needs at least 2 sites to compare rankings (--sites matched {n_sites}); give a --sites "
                "pattern that matches more linear modules"
            )
        import warnings

        from lrm_interp.attribution.faithfulness import UnresolvedSitesWarning

        with warnings.catch_warnings():  # printed below as this command's warnings, one line each
            warnings.simplefilter("ignore", UnresolvedSitesWarning)
            res = atp_faithfulness(
                model,
                ds,
                config=cfg,
                tokenizer=tok,
                alphas=alphas,
                max_spans=a.max_spans,
                seed=0 if a.seed is None else a.seed,
                top_k=a.top_k,
                batch_size=a.batch_size,
                progress=not a.quiet,
            )
        out = res.save(a.out, overwrite=a.overwrite)
        print(f"wrote {out}/" + ", ".join(FILES))
        for r in res.rows:
            print(
                f"  alpha={r.alpha:<5g} {r.behavior:24s} spearman {r.spearman:6.3f}  top-{res.top_k} overlap "
                f"{r.top_k_overlap:2d}/{min(res.top_k, len(res.site_names))}  ({r.n_spans} spans, {r.n_traces} traces)"
            )
        left = {b: c["left_out_by_max_spans"] for b, c in res.provenance["spans"].items() if c["left_out_by_max_spans"]}
        if left:
            print(f"  spans left out by --max-spans: {left}")
        for w in res.warnings:  # the rows whose patch resolved only some sites
            print(f"{PROG} faithfulness: warning: {w}", file=sys.stderr)
        return 0


def register(sub) -> None:
    """Add the ``faithfulness`` subcommand to ``sub``."""
    from lrm_interp.attribution.config import AttributionConfig
    from lrm_interp.model.loading import model_aliases

    p = add_command(sub, "faithfulness", help=HELP, description=DESCRIPTION, examples=EXAMPLES)
    io = p.add_argument_group("input and output")
    io.add_argument(
        "--model",
        required=True,
        metavar="DIR|ALIAS",
        help="local Hugging Face model directory, or an alias: " + ", ".join(model_aliases()),
    )
    io.add_argument("--data", required=True, metavar="PATH", help="JSONL trace file or paper-layout directory")
    io.add_argument("--out", required=True, metavar="DIR", help="output directory (faithfulness.json, .csv, sites.csv)")
    io.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier faithfulness result in --out (refused otherwise; a folder of other files never)",
    )
    io.add_argument("--quiet", action="store_true", help="no progress bars")
    ck = p.add_argument_group("the check")
    ck.add_argument(
        "--alpha",
        nargs="+",
        action=Accumulate,
        type=float_arg(0.0, None, min_open=True),
        default=[0.1, 1.0],
        metavar="X",
        help="patch scales alpha > 0 of the real patching (a + alpha * u_hat); 1 = the full-size patch the "
        "package's scores describe, 0.1 checks the linearisation",
    )
    ck.add_argument(
        "--max-spans",
        type=positive_int,
        default=None,
        metavar="N",
        help="at most N spans per behaviour, a seeded uniform sample (default: all; the steering vectors always "
        "use every trace); used and left-out spans are counted in faithfulness.json",
    )
    ck.add_argument(
        "--seed",
        type=seed_int,
        default=None,
        metavar="N",
        help="with --max-spans: seed of its sample (0 is a seed; default 0)",
    )
    ck.add_argument("--top-k", type=positive_int, default=10, metavar="K", help="k of the top-k overlap")
    ck.add_argument(
        "--batch-size", type=positive_int, default=16, metavar="N", help="(alpha, site) patched rows per forward"
    )
    add_dataclass_args(
        p.add_argument_group("attribution settings (lrm_interp.AttributionConfig, as 'attribute')"),
        AttributionConfig,
        metavars={"sites": "REGEX", "behaviors": "LABEL"},
        notes={
            "sites": "on the command line a regex, matched with re.search (e.g. 'mlp' or 'layers\\.(0|1)\\.self_attn')"
        },
    )
    p.set_defaults(fn=cmd_faithfulness)


__all__ = ["register", "cmd_faithfulness", "HELP", "DESCRIPTION", "EXAMPLES"]
