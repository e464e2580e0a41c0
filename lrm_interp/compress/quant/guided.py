"""Loss-guided GPTQ Hessians: the layer objective weighted by how much the end loss needs each
token's output (in the spirit of GuidedQuant, ICML 2025).

GPTQ minimises ``‖X Wᵀ − X Ŵᵀ‖²`` with ``H = 2 XᵀX / n``: every calibration token counts the
same. Here each token ``t`` of a loss batch is weighted by ``‖∂L/∂y_t‖²``, the squared gradient
of the end loss (e.g. a reasoning-behaviour span's cross-entropy) with respect to the site's
output at that token — a token-level Fisher weighting, shared by all output rows::

    H_g = 2 · Σ_b Σ_t ‖∂L_b/∂y_bt‖² x_bt x_btᵀ / Σ_b Σ_t ‖∂L_b/∂y_bt‖²

(GuidedQuant weights per group of output channels and runs GPTQ per group; the shared weight
keeps one Hessian per site, so the plain GPTQ driver runs unchanged.) The Hessian GPTQ uses is a
scale-free mix with the plain calibration Hessian, so inputs that the loss batches never
exercise stay covered (:func:`mix_hessians`):
``H = (1 − mix) · H_c / mean diag(H_c) + mix · H_g / mean diag(H_g)``.
GPTQ's result does not depend on the overall scale of ``H`` (its damping is relative to the
mean diagonal), so only ``mix`` matters. ``quantize_model_(..., hessian_transform=guided_transform(H_g,
mix))`` applies the mix to the Hessians GPTQ collects layer by layer (:func:`guided_transform`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any, cast

import torch
from tqdm.auto import tqdm

from lrm_interp.checks import checked_arguments, shown_value
from lrm_interp.model.sites import Site, get_module

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@checked_arguments
def gradient_weighted_hessians(
    model: torch.nn.Module,
    sites: Sequence[Site],
    loss_fn: Callable[[Any, Any], torch.Tensor | None],
    batches: Iterable[Any],
    *,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """``{site: H_g [in, in]}`` (float32, CPU) over ``batches`` (module docs).

    ``loss_fn(model, batch)`` returns a scalar loss (``None`` skips the batch); one forward and
    one backward per batch, gradients only with respect to the sites' outputs (no weight
    gradients are formed; every ``requires_grad`` flag is restored). A site whose outputs never
    receive gradient is a ``RuntimeError`` naming it.
    """
    sites = list(sites)
    acc = {s.name: torch.zeros(s.in_features, s.in_features) for s in sites}
    tot = {s.name: 0.0 for s in sites}
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name):
        def fn(mod, args, out):
            seen[name] = (args[0].detach(), out)

        return fn

    emb = cast("PreTrainedModel", model).get_input_embeddings().weight
    flags = [(p, p.requires_grad) for p in model.parameters()]
    handles = [get_module(model, s.name).register_forward_hook(hook(s.name)) for s in sites]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        emb.requires_grad_(True)  # so every site output is part of the graph
        total = len(batches) if isinstance(batches, Sized) else None
        for batch in tqdm(
            batches, desc="output gradients", total=total, unit="pass", leave=False, disable=not progress
        ):
            seen.clear()
            loss = loss_fn(model, batch)
            if loss is None:
                continue
            names = [n for n in acc if n in seen]
            grads = torch.autograd.grad(loss, [seen[n][1] for n in names], allow_unused=True)
            for n, g in zip(names, grads):
                if g is None:
                    continue
                x = seen[n][0].reshape(-1, seen[n][0].shape[-1]).float().cpu()
                w = g.detach().reshape(-1, g.shape[-1]).float().cpu().pow(2).sum(-1)  # [tokens]
                acc[n] += (x * w[:, None]).T @ x
                tot[n] += float(w.sum())
            seen.clear()
    finally:
        for h in handles:
            h.remove()
        for p, f in flags:
            p.requires_grad_(f)
    dead = [n for n, t in tot.items() if t <= 0]
    if dead:
        raise RuntimeError(f"the loss batches give no gradient at the outputs of sites {dead[:5]}")
    return {n: 2 * acc[n] / tot[n] for n in acc}


def guided_transform(
    guided: Mapping[str, torch.Tensor], mix: float = 0.5
) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """``(site, H_c) -> mix_hessians({site: H_c}, {site: guided[site]}, mix)[site]`` for
    ``quantize_model_(..., method="gptq", hessian_transform=...)``: the calibration Hessians keep
    being collected layer by layer on the partly quantized model; the gradient weighting
    ``guided`` (e.g. from the unquantized model) is mixed into each. A site missing from
    ``guided`` is a ``KeyError`` naming it."""
    if not 0.0 <= float(mix) <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {shown_value(mix)}")

    def fn(site: str, H: torch.Tensor) -> torch.Tensor:
        if site not in guided:
            raise KeyError(f"no guided Hessian for site {site!r}")
        return mix_hessians({site: H}, {site: guided[site]}, mix)[site].to(H.device)

    return fn


def mix_hessians(
    calib: Mapping[str, torch.Tensor], guided: Mapping[str, torch.Tensor], mix: float = 0.5
) -> dict[str, torch.Tensor]:
    """``(1 − mix) · H_c / mean diag(H_c) + mix · H_g / mean diag(H_g)`` per site (module docs);
    ``mix`` in ``[0, 1]``; both mappings must name the same sites."""
    if not 0.0 <= float(mix) <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {shown_value(mix)}")
    if set(calib) != set(guided):
        raise KeyError(f"Hessians for different sites: {sorted(set(calib) ^ set(guided))[:5]}")

    def unit(H: torch.Tensor) -> torch.Tensor:
        d = torch.diag(H).mean()
        return H / d if d > 0 else H

    return {n: (1 - mix) * unit(calib[n].float().cpu()) + mix * unit(guided[n].float().cpu()) for n in calib}
