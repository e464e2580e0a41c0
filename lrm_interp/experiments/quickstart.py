"""``lrm-interp quickstart``: the whole pipeline, offline, on the shipped toy reasoning model.

1. load the model (``lrm_interp/assets/toy_reasoner``; ``--tiny``: a random tiny Llama, a
   plumbing check only, and it says so);
2. generate annotated reasoning traces (math / logic / knowledge) with gold behaviour spans;
3. ``attribute()``: steering vectors (DoM) and attribution-patching scores per linear module;
4. quantize a copy to 3 bits (RTN, group 128), attribute again and compare (importance shift);
   on the shipped model, also score both on held-out problems (greedy decoding);
5. write ``scores.csv``, ``heatmap.png``, ``shift.png`` and the result folders, print the top modules.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch


def run_quickstart(out_dir: str | Path = "lrm_interp_quickstart", *, n_traces: int = 24, tiny: bool = False,
                   bits: int = 3, group_size: int = 128, n_eval: int = 30, progress: bool = True) -> dict:
    """Run the quickstart; returns a summary dict (also printed).

    ``n_eval`` held-out problems (split over the task families) are solved by the full
    precision and the quantized model (shipped model only; 0 skips the evaluation).
    """
    from lrm_interp.attribution.pipeline import attribute
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.attribution.results import compare
    from lrm_interp.toy.tasks import FAMILIES, generate_dataset

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tiny:
        from lrm_interp.testing import byte_tokenizer, tiny_model

        model, tok = tiny_model("llama"), byte_tokenizer()
        print("quickstart on a TINY RANDOM model (--tiny): this checks the plumbing, the scores mean nothing.")
    else:
        from lrm_interp.toy import load_toy_model, toy_model_dir

        model, tok = load_toy_model()
        print(f"quickstart on the shipped toy reasoning model ({toy_model_dir()})")
    per_family = max(1, n_traces // len(FAMILIES))
    ds = generate_dataset(per_family, seed=4242)
    ds.save_jsonl(out / "traces.jsonl")
    print(f"{len(ds)} annotated traces, spans per behaviour: {ds.span_counts()}")

    res = attribute(model, ds, tokenizer=tok, out_dir=out / "attribution_fp32", progress=progress)
    res.write_tables(out / "attribution_fp32")
    q = copy.deepcopy(model)
    rep = quantize_model_(q, bits=bits, group_size=group_size, progress=False)
    res_q = attribute(q, ds, tokenizer=tok, out_dir=out / f"attribution_rtn{bits}", progress=progress)
    res_q.write_tables(out / f"attribution_rtn{bits}")
    acc = {}
    if not tiny and n_eval > 0:
        from lrm_interp.toy.evaluate import evaluate
        from lrm_interp.toy.tasks import problems

        held = problems(max(1, n_eval // len(FAMILIES)), seed=2)
        acc = {"fp32": evaluate(model, tok, held), f"rtn{bits}": evaluate(q, tok, held)}
        print(f"accuracy on {len(held)} held-out problems (greedy): "
              + "; ".join(f"{k}: " + ", ".join(f"{f} {100 * v[f]:.0f}%" for f in (*FAMILIES, "mean"))
                          for k, v in acc.items()))
    shift = compare(res, res_q)
    shift.write_tables(out)

    print("\nmost important modules per behaviour (relative importance, full precision):")
    for b in res.behaviors:
        print(f"  {b:24s} " + ", ".join(f"{s.replace('model.layers.', 'L')} {ri:.3f}" for _, s, ri in res.top(3, b)))
    dec = shift.decreases
    print(f"\nafter {bits}-bit RTN (group {group_size}) the largest importance decreases:")
    for i, b in enumerate(shift.behaviors):
        j = int(torch.argmax(dec[i]))
        print(f"  {b:24s} {shift.sites[j].name}: RI {float(res.ri[i, j]):.3f} -> {float(res_q.ri[i, j]):.3f}")
    summary = {"out_dir": str(out), "traces": len(ds), "sites": len(res.sites), "behaviors": list(res.behaviors),
               "quantized_weights": rep.n_weights, "accuracy": acc, "seconds": round(time.time() - t0, 1), "tiny": tiny}
    print(f"\nwrote {out}/ (traces.jsonl, attribution_fp32/, attribution_rtn{bits}/, shift.csv, shift.png) "
          f"in {summary['seconds']} s")
    return summary
