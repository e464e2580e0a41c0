"""Slow naive reference implementations (store everything, one pass per span, python loops).

Used only by tests to check the fast paths in lrm_interp.attribution.dom / lrm_interp.attribution.atp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lrm_interp.model.sites import get_module


def _forward_store(model, ids, names):
    outs, hs = {}, []
    for n in names:
        hs.append(get_module(model, n).register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o)))
    emb = model.get_input_embeddings().register_forward_hook(lambda m, a, o: o.detach().requires_grad_(True))
    try:
        logits = model(input_ids=ids).logits
    finally:
        for h in hs:
            h.remove()
        emb.remove()
    return logits, outs


def naive_dom(model, encoded, names, behaviors, *, negatives="all", weighting="trace", special_tokens="exclude"):
    """Returns (u, u_hat, mean_all) dicts [behavior][site] -> Tensor (float64).

    ``special_tokens="exclude"``: D− leaves out every position holding a special token id;
    ``"include"`` (the released code): D− over ``all`` starts at position 0 (BOS included).
    """
    per_trace = []
    for e in encoded:
        with torch.no_grad():
            _, outs = _forward_store(model, e.input_ids[None], names)
        n = len(e)
        if negatives == "all":
            neg = list(range(0 if special_tokens == "include" else e.first_content, n))
        elif negatives == "response":
            neg = list(range(max(e.response_start, e.first_content), n))
        else:
            neg = list(range(max(e.response_start, e.first_content), e.think_end))
        if special_tokens == "exclude":
            specials = set(getattr(naive_dom, "special_ids", ()))
            neg = [t for t in neg if int(e.input_ids[t]) not in specials]
        pos = {}
        for b in behaviors:
            toks = set()
            for s in e.spans:
                if s.behavior == b:
                    toks.update(range(s.ctx_start, s.end))
            pos[b] = sorted(toks)
        per_trace.append(({k: v[0].double() for k, v in outs.items()}, neg, pos))
    u, uhat, mean_all = {}, {}, {}
    for n_ in names:
        all_tok = torch.cat([o[n_][neg] for o, neg, _ in per_trace])
        mean_all[n_] = all_tok.mean(0)
    for b in behaviors:
        u[b], uhat[b] = {}, {}
        for n_ in names:
            if weighting == "trace":
                pos_means = [o[n_][p[b]].mean(0) for o, _, p in per_trace if p[b]]
                neg_means = [o[n_][neg].mean(0) for o, neg, _ in per_trace]
                diff = torch.stack(pos_means).mean(0) - torch.stack(neg_means).mean(0)
            else:
                pos_tok = torch.cat([o[n_][p[b]] for o, _, p in per_trace if p[b]])
                diff = pos_tok.mean(0) - mean_all[n_]
            u[b][n_] = diff
            uhat[b][n_] = diff / diff.norm() * mean_all[n_].norm()
    return u, uhat, mean_all


def naive_span_grads(model, e, names, spans, *, joint, off_by_one):
    """Per span: dict site -> mean gradient over the span's window [d] (float64)."""

    def targets(s):
        return max(s.start, 1), s.end

    def window(s):
        return (s.start, s.end) if off_by_one else (s.start - 1, s.end - 1)

    res = []
    if joint:
        L = max(s.end for s in spans)
        logits, outs = _forward_store(model, e.input_ids[None, :L], names)
        loss = 0
        for s in spans:
            a, b = targets(s)
            loss = loss + F.cross_entropy(logits[0, a - 1 : b - 1], e.input_ids[a:b])
        grads = torch.autograd.grad(loss, [outs[n] for n in names])
        for s in spans:
            p0, p1 = window(s)
            res.append({n: g[0, p0 : min(p1, L)].double().mean(0) for n, g in zip(names, grads)})
        return res
    for s in spans:
        logits, outs = _forward_store(model, e.input_ids[None, : s.end], names)
        a, b = targets(s)
        loss = F.cross_entropy(logits[0, a - 1 : b - 1], e.input_ids[a:b])
        grads = torch.autograd.grad(loss, [outs[n] for n in names])
        p0, p1 = window(s)
        res.append({n: g[0, p0 : min(p1, s.end)].double().mean(0) for n, g in zip(names, grads)})
    return res


def naive_atp_dots(model, encoded, names, behaviors, vectors, *, mode="exact", off_by_one=False):
    """{behavior: (list over spans of {site: dot}, n_traces)}; freezes the model's parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    res = {}
    for b in behaviors:
        dots, n_traces = [], 0
        for e in encoded:
            spans = [s for s in e.spans if s.behavior == b]
            if not spans:
                continue
            n_traces += 1
            for g in naive_span_grads(model, e, names, spans, joint=(mode == "joint"), off_by_one=off_by_one):
                dots.append({n: float(vectors[b][n].double() @ g[n]) for n in names})
        res[b] = (dots, n_traces)
    return res


def naive_scores(dots_by_behavior, names, *, score="paper"):
    """Paper Eq. 2 (|Σ dot| / |D+|) or code (Σ |dot| / #spans), as [behavior][site] -> float."""
    out = {}
    for b, (dots, n_traces) in dots_by_behavior.items():
        out[b] = {}
        for n in names:
            vals = [d[n] for d in dots]
            if not vals:
                out[b][n] = 0.0
            elif score == "paper":
                out[b][n] = abs(sum(vals)) / n_traces
            else:
                out[b][n] = sum(abs(v) for v in vals) / len(vals)
    return out


def naive_atp(model, encoded, names, behaviors, vectors, *, mode="exact", score="paper", off_by_one=False):
    """Scores [behavior][site] -> float (one forward+backward per span, or per trace in joint mode)."""
    dots = naive_atp_dots(model, encoded, names, behaviors, vectors, mode=mode, off_by_one=off_by_one)
    return naive_scores(dots, names, score=score)
