"""Wall time and a CPU profile of ``lrm_interp.attribute()`` on SmolLM2-135M, 10 traces of ~512 tokens.

Usage (``--profile`` adds the top functions by cumulative time, from ``cProfile``)::

    python benchmarks/profile_attribute.py [--profile] [--mode exact|joint] [--prefix-cache 0|1]

To compare with another checkout (e.g. the code before a change), run the same script with
``PYTHONPATH=<that checkout>``: it only uses ``lrm_interp.attribute``, ``load_model`` and the
toy task generator, whose signatures are unchanged since 0.1.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time


def traces(tok, n: int = 10, target_tokens: int = 512):
    """``n`` toy-task traces concatenated to about ``target_tokens`` tokens each, spans kept."""
    from lrm_interp import BehaviorSpan, ReasoningDataset, ReasoningTrace

    try:
        from lrm_interp.toy.tasks import generate_dataset
    except ImportError:  # pragma: no cover
        raise
    pool = list(generate_dataset(40, seed=11))
    out, k = [], 0
    for i in range(n):
        prompt, resp, spans = pool[k % len(pool)].prompt, "", []
        while len(tok(prompt + resp)["input_ids"]) < target_tokens:
            t = pool[k % len(pool)]
            k += 1
            off = len(resp)
            resp += t.response.replace("</think>", "") + "\n"
            spans += [BehaviorSpan(s.behavior, s.start + off, s.end + off) for s in t.spans]
        out.append(ReasoningTrace(f"p{i}", prompt, resp, tuple(spans)))
    return ReasoningDataset(out, name="profile")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="store_true", help="print the top 25 functions by cumulative time")
    ap.add_argument("--mode", default="exact", choices=["exact", "joint"], help="AtP mode")
    ap.add_argument(
        "--prefix-cache",
        type=int,
        default=None,
        choices=[0, 1],
        help="exact mode's prefix cache (omit for the checkout's default)",
    )
    a = ap.parse_args(argv)
    import lrm_interp
    from lrm_interp import load_model

    model, tok = load_model("smollm2-135m")
    ds = traces(tok)
    n_tok = [len(tok(t.text)["input_ids"]) for t in ds]
    kw = {"mode": a.mode}
    if a.prefix_cache is not None:
        kw["prefix_cache"] = bool(a.prefix_cache)
    lrm_interp.attribute(model, ds[:1], tokenizer=tok, progress=False, **kw)  # warm-up
    prof = cProfile.Profile() if a.profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    res = lrm_interp.attribute(model, ds, tokenizer=tok, progress=False, **kw)
    if prof:
        prof.disable()
    secs = time.perf_counter() - t0
    spans = sum(res.provenance["counts"]["spans"].values())
    print(
        json.dumps(
            {
                "seconds": round(secs, 2),
                "traces": len(ds),
                "tokens": n_tok,
                "spans": spans,
                **kw,
                "lrm_interp": lrm_interp.__file__,
            }
        )
    )
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
        print(s.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
