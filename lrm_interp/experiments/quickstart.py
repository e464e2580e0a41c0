"""``lrm-interp quickstart``: the three things users come for, offline, on the shipped toy reasoner.

1. **Which modules matter** — load the model (``lrm_interp/assets/toy_reasoner``; ``--tiny``: a
   random tiny Llama, a plumbing check only, and it says so), generate annotated reasoning traces
   (math / logic / knowledge) with gold behaviour spans, ``attribute()``: steering vectors (DoM)
   and attribution-patching scores per linear module → ``attribution_fp32/`` (result,
   ``scores.csv``, ``heatmap.png``) and ``ranking.csv``.
2. **Protection masks** — a 2 % global budget of per-weight saliency (behaviour-span
   attribution × module relative importance, :data:`lrm_interp.protect.registry.SALIENCIES`
   ``"attribution_ri"``) → ``masks.safetensors`` (loadable with ``load_masks``) + ``masks.json``
   (summary, bits per weight).
3. **What compression does** — a 3-bit RTN copy (group 128) with and without the masks; held-out
   accuracy of full precision / 3-bit / 3-bit + protection with bits per weight (shipped model);
   the 3-bit copy attributed again and compared → ``shift.csv`` / ``shift.png``.

Finally it prints the files it wrote and the commands that reuse each of them, and writes all of
it on one self-contained page, ``report.html`` (:mod:`lrm_interp.experiments.report`), whose path
is the last line printed.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from lrm_interp._io import atomic_write_text
from lrm_interp.attribution.pipeline import attribute
from lrm_interp.attribution.results import compare
from lrm_interp.checks import check_fraction, check_int
from lrm_interp.compress.quant.apply import quantize_model_
from lrm_interp.compress.quant.grid import check_bits
from lrm_interp.data.tokens import encode_trace
from lrm_interp.experiments.report import write_report
from lrm_interp.protect.encoding import bits_per_weight, save_masks
from lrm_interp.protect.policies import build_masks
from lrm_interp.protect.registry import SALIENCIES, build_saliency
from lrm_interp.toy.tasks import FAMILIES, generate_dataset

SALIENCY = "attribution_ri"


def _accuracy_table(acc: dict[str, dict[str, float]], bpw: dict[str, float], n: int) -> list[str]:
    head = f"held-out accuracy ({n} problems, greedy decoding)"
    cols = [*FAMILIES, "mean"]
    width = max(len(k) for k in acc) + 2
    lines = [head, " " * width + "".join(f"{c:>11s}" for c in cols) + f"{'bits/weight':>13s}"]
    for k, v in acc.items():
        lines.append(f"{k:<{width}s}" + "".join(f"{100 * v[c]:10.1f}%" for c in cols) + f"{bpw[k]:13.3f}")
    return lines


def run_quickstart(out_dir: str | Path = "lrm_interp_quickstart", *, n_traces: int = 24, tiny: bool = False,
                   bits: int = 3, group_size: int = 128, budget: float = 0.02, n_eval: int = 30,
                   progress: bool = True) -> dict:
    """Run the quickstart; returns a summary dict (everything it prints, as data).

    ``n_eval`` held-out problems (split over the task families) are solved by the full
    precision, the ``bits``-bit RTN and the protected ``bits``-bit copies (shipped model only;
    0 skips the evaluation). ``budget``: fraction of the linear weights kept in full precision,
    in (0, 1). Every setting is checked (``ValueError``) before anything is loaded or written.
    """
    # every setting checked before anything is loaded or written
    check_int("n_traces", n_traces, min=1)
    check_bits(bits)
    check_int("group_size", group_size, min=1)
    check_fraction("budget", budget, zero=False, one=False)
    check_int("n_eval", n_eval, min=0)
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = "tiny-" if tiny else ""
    if tiny:
        from lrm_interp.testing import byte_tokenizer, tiny_model

        model, tok = tiny_model("llama"), byte_tokenizer()
        model_ref = str(out / "tiny_model")
        model.save_pretrained(model_ref)
        tok.save_pretrained(model_ref)
        print("quickstart on a TINY RANDOM model (--tiny): this checks the plumbing, the scores mean nothing.")
    else:
        from lrm_interp.toy import load_toy_model, toy_model_dir

        model, tok = load_toy_model()
        model_ref = "toy"
        print(f"quickstart on the shipped toy reasoning model ({toy_model_dir()})")
    per_family = max(1, n_traces // len(FAMILIES))
    ds = generate_dataset(per_family, seed=4242)
    ds.save_jsonl(out / "traces.jsonl")
    print(f"{len(ds)} annotated traces, spans per behaviour: {ds.span_counts()}")

    # 1. which modules matter
    d_fp = out / f"{tag}attribution_fp32"
    res = attribute(model, ds, tokenizer=tok, out_dir=d_fp, progress=progress)
    res.write_tables(d_fp)
    ranking = res.to_dataframe().sort_values(["behavior", "rank"], kind="stable")
    atomic_write_text(out / "ranking.csv", ranking.to_csv(index=False))

    # 2. protection masks from the full-precision attribution
    sites = list(res.sites)
    enc = [encode_trace(tok, t) for t in ds]
    sal = build_saliency(SALIENCY, model, sites, encoded=enc, behaviors=list(res.behaviors), bits=bits,
                         group_size=group_size, module_importance=res, progress=progress)
    masks = build_masks(sites, "global_top", budget, saliency=sal)
    bpw_p = bits_per_weight(masks, sites, bits=bits, group_size=group_size)
    bpw_q = bits_per_weight({}, sites, bits=bits, group_size=group_size)
    meta = {"policy": "global_top", "saliency": SALIENCY, "saliency_label": SALIENCIES[SALIENCY].label,
            "budget": budget, "bits": bits, "group_size": group_size, "symmetric": False,
            "scores": str(d_fp), "bits_per_weight": {k: v for k, v in bpw_p.items() if k != "encodings"}}
    save_masks(masks, out / "masks.safetensors", metadata=meta)
    n_prot = sum(m.n_protected for m in masks.values())
    atomic_write_text(out / "masks.json", json.dumps({
        **meta, "protected_weights": n_prot, "weights": sum(s.n_weights for s in sites),
        "sites": {k: m.n_protected for k, m in masks.items() if m.n_protected},
        "load": "lrm_interp.protect.load_masks('masks.safetensors')"}, indent=2))
    print(f"\nprotection: {n_prot} weights ({100 * bpw_p['protected_fraction']:.2f}%) kept in full precision, "
          f"chosen by {SALIENCIES[SALIENCY].label}; {bits}-bit group {group_size}: "
          f"{bpw_q['bpw']:.3f} -> {bpw_p['bpw']:.3f} bits/weight")

    # 3. what compression does
    q = copy.deepcopy(model)
    quantize_model_(q, bits=bits, group_size=group_size, progress=False)
    qp = copy.deepcopy(model)
    quantize_model_(qp, bits=bits, group_size=group_size, masks=masks, progress=False)
    acc: dict[str, dict[str, float]] = {}
    held: list = []
    labels = {"fp32": "full precision (fp32)", "rtn": f"{bits}-bit RTN, group {group_size}",
              "rtn+protect": f"{bits}-bit RTN + {budget:.0%} protected"}
    if not tiny and n_eval > 0:
        from lrm_interp.toy.evaluate import evaluate
        from lrm_interp.toy.tasks import problems

        held = problems(max(1, n_eval // len(FAMILIES)), seed=2)
        acc = {labels["fp32"]: evaluate(model, tok, held), labels["rtn"]: evaluate(q, tok, held),
               labels["rtn+protect"]: evaluate(qp, tok, held)}
        bpw = {labels["fp32"]: 32.0, labels["rtn"]: bpw_q["bpw"], labels["rtn+protect"]: bpw_p["bpw"]}
        print()
        print("\n".join(_accuracy_table(acc, bpw, len(held))))
    d_q = out / f"{tag}attribution_rtn{bits}"
    res_q = attribute(q, ds, tokenizer=tok, out_dir=d_q, progress=progress)
    res_q.write_tables(d_q)
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

    seconds = round(time.time() - t0, 1)
    files = {"traces.jsonl": "the annotated traces", f"{d_fp.name}/": "attribution result (+ scores.csv, heatmap.png)",
             "ranking.csv": "sites ranked per behaviour", "masks.safetensors": f"the {budget:.0%} protection masks",
             "masks.json": "their summary and bits per weight", f"{d_q.name}/": f"attribution of the {bits}-bit copy",
             "shift.csv, shift.png": "importance shift full precision -> 3-bit",
             "report.html": "all of the above on one page"}
    print(f"\nwrote {out}/ in {seconds} s:")
    for f, what in files.items():
        print(f"  {f:24s} {what}")
    o = str(out)
    commands = [
        f"lrm-interp attribute --model {model_ref} --data {o}/traces.jsonl --out {o}/{d_fp.name}",
        f"lrm-interp protect --scores {o}/{d_fp.name} --model {model_ref} --data {o}/traces.jsonl "
        f"--saliency {SALIENCY} --budget {budget} --bits {bits} --group-size {group_size} --out {o}/masks.safetensors",
        f"lrm-interp quantize --model {model_ref} --bits {bits} --group-size {group_size} "
        f"--masks {o}/masks.safetensors --out {o}/model_rtn{bits}_protected",
        f"lrm-interp compare --original {o}/{d_fp.name} --compressed {o}/{d_q.name} --out {o}",
    ]
    print("\nreuse them:")
    for c in commands:
        print(f"  {c}")
    print("  python: lrm_interp.attribution.results.Attribution.load(...), lrm_interp.protect.load_masks(...)")
    report = write_report(
        out / "report.html", title=f"lrm_interp quickstart — {'tiny random model' if tiny else 'shipped toy reasoner'}",
        accuracy=acc, bits_per_weight={labels["fp32"]: 32.0, labels["rtn"]: bpw_q["bpw"],
                                       labels["rtn+protect"]: bpw_p["bpw"]},
        n_problems=len(held) if acc else 0, attribution=res, shift=shift,
        images={"Which modules matter: attribution heatmap (full precision)": d_fp / "heatmap.png",
                f"What {bits}-bit RTN does: importance decreases": out / "shift.png"},
        masks_file=str(out / "masks.safetensors"),
        masks_summary=(f"{n_prot} weights ({100 * bpw_p['protected_fraction']:.2f}%) kept in full precision, chosen "
                       f"by {SALIENCIES[SALIENCY].label}; {bits}-bit group {group_size}: {bpw_q['bpw']:.3f} -> "
                       f"{bpw_p['bpw']:.3f} bits/weight"),
        files=files, commands=commands)
    print(f"\nreport: {report} (self-contained HTML: open it in a browser)")
    return {"out_dir": o, "traces": len(ds), "sites": len(res.sites), "behaviors": list(res.behaviors),
            "protected_weights": n_prot, "bits_per_weight": {"rtn": bpw_q["bpw"], "rtn+protect": bpw_p["bpw"]},
            "accuracy": acc, "files": sorted(files), "commands": commands, "seconds": seconds, "tiny": tiny}
