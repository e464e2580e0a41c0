"""``lrm-interp protect`` and ``lrm-interp quantize`` (mirror masks.* / quant.quantize_model_)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

POLICIES = ("global_top", "per_module_top", "modules_by_score", "final_mlp")
SALIENCIES = ("attribution", "attribution_ri", "magnitude", "activation", "hessian", "random")


def _calib_ids(tok, data: str | None, length: int = 256):
    import torch

    from lrm_interp.data.loading import load_dataset

    if data is None:
        from lrm_interp.toy.tasks import generate_dataset

        texts = [t.text for t in generate_dataset(16, seed=77)]
    else:
        texts = [t.text for t in load_dataset(data)]
    ids = torch.tensor([i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"]])
    n = max(1, ids.numel() // length)
    return ids[: n * length].view(n, -1)


def cmd_protect(a: argparse.Namespace) -> int:
    from lrm_interp.protect import masks as M
    from lrm_interp.protect import saliency as S
    from lrm_interp.attribution.results import Attribution

    attr = Attribution.load(a.scores)
    sites = list(attr.sites)
    if a.policy in ("final_mlp", "modules_by_score"):
        masks = M.build_masks(sites, a.policy, a.budget, scores=S.mean_ri(attr, sites), always=a.always,
                              never=a.never)
    else:
        if a.model is None:
            raise ValueError(f"--policy {a.policy} scores single weights: it needs --model")
        from lrm_interp.data.loading import load_dataset
        from lrm_interp.model.loading import load_model
        from lrm_interp.model.sites import resolve_sites
        from lrm_interp.data.tokens import encode_trace

        model, tok = load_model(a.model)
        sites = resolve_sites(model, [s.name for s in sites])
        if a.saliency in ("attribution", "attribution_ri"):
            if a.data is None:
                raise ValueError("attribution saliency needs --data (annotated traces)")
            enc = [encode_trace(tok, t) for t in load_dataset(a.data)]
            src = S.attribution(model, sites, enc, list(attr.behaviors), bits=a.bits, group_size=a.group_size,
                                module_importance=S.mean_ri(attr, sites) if a.saliency == "attribution_ri" else None)
        elif a.saliency == "magnitude":
            src = S.magnitude(model, sites)
        elif a.saliency == "random":
            src = S.random_saliency(model, sites, seed=a.seed)
        elif a.saliency == "activation":
            src = S.activation(model, sites, _calib_ids(tok, a.data))
        else:
            src = S.hessian(model, sites, _calib_ids(tok, a.data), bits=a.bits, group_size=a.group_size)
        # build_masks: `always` modules count against a global budget, so the total stays exact
        masks = M.build_masks(sites, a.policy, a.budget, saliency=src, always=a.always, never=a.never)
    bpw = M.bits_per_weight(masks, sites, bits=a.bits, group_size=a.group_size)
    M.save_masks(masks, a.out, metadata={"policy": a.policy, "saliency": a.saliency, "budget": a.budget,
                                          "bits": a.bits, "group_size": a.group_size, "scores": str(a.scores),
                                          "bits_per_weight": {k: v for k, v in bpw.items() if k != "encodings"}})
    print(f"wrote {a.out}: {sum(m.n_protected for m in masks.values())} protected weights in {len(masks)} "
          f"sites ({100 * bpw['protected_fraction']:.2f}%), {bpw['bpw']:.3f} bits/weight at {a.bits}-bit "
          f"group {a.group_size} (index {bpw['index_bits']:.3f}, FP16 values {bpw['value_bits']:.3f})")
    return 0


def cmd_quantize(a: argparse.Namespace) -> int:
    from lrm_interp.protect.masks import bits_per_weight, load_masks
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.model.loading import load_model
    from lrm_interp.model.provenance import save_record
    from lrm_interp.model.sites import find_sites
    from lrm_interp._io import atomic_write_text

    model, tok = load_model(a.model)
    masks = load_masks(a.masks)[0] if a.masks else {}
    calib = _calib_ids(tok, a.calib) if a.method == "gptq" else None
    rep = quantize_model_(model, bits=a.bits, group_size=a.group_size, method=a.method, masks=masks,
                          calib=calib, symmetric=a.symmetric)
    out = Path(a.out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    save_record(model, out)
    info = rep.to_dict() | {"bits_per_weight": bits_per_weight(masks, find_sites(model), bits=a.bits,
                                                                 group_size=a.group_size)["bpw"],
                            "masks": a.masks, "source_model": str(a.model)}
    info.pop("sites", None)
    atomic_write_text(out / "lrm_interp_quantization.json", json.dumps(info, indent=2))
    print(f"wrote {out} (fake-quantized weights, loads with from_pretrained): {rep.n_sites} sites, "
          f"{rep.n_protected} protected weights, {info['bits_per_weight']:.3f} bits/weight")
    return 0


def register(sub) -> None:
    p = sub.add_parser("protect", help="build protection masks from attribution scores")
    p.add_argument("--scores", required=True, help="an attribution result directory")
    p.add_argument("--budget", type=float, default=0.02)
    p.add_argument("--policy", choices=POLICIES, default="global_top")
    p.add_argument("--saliency", choices=SALIENCIES, default="attribution_ri")
    p.add_argument("--model", default=None, help="model dir (needed for per-weight policies)")
    p.add_argument("--data", default=None, help="annotated traces (attribution saliency / calibration)")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--always", default=None, help="regex of sites always protected whole")
    p.add_argument("--never", default=None, help="regex of sites never protected")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_protect)

    q = sub.add_parser("quantize", help="mask-aware RTN/GPTQ fake quantization of a model")
    q.add_argument("--model", required=True)
    q.add_argument("--bits", type=int, required=True)
    q.add_argument("--group-size", type=int, default=128)
    q.add_argument("--method", choices=["rtn", "gptq"], default="rtn")
    q.add_argument("--masks", default=None)
    q.add_argument("--calib", default=None, help="traces for GPTQ calibration (default: toy tasks)")
    q.add_argument("--symmetric", action="store_true")
    q.add_argument("--out", required=True)
    q.set_defaults(fn=cmd_quantize)
