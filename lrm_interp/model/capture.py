"""Capture engine: context-managed hooks on linear sites, reducing on the fly.

::

    red = MaskedSum("output", weights)            # weights [g, b, s]
    with Capture(model, sites, [red]) as cap:
        model(input_ids)
    red.sums["model.layers.0.mlp.up_proj"]        # [g, d_out] float32

Gradients of the loss w.r.t. site outputs reach reducers with stage ``"grad"`` through
tensor hooks registered in the forward hook (no ``retain_grad``). When gradients are
requested and every parameter is frozen, the capture makes the input-embedding output
(or an ``inputs_embeds`` argument) require grad so an activation-only backward reaches every
site; parameter gradients are not needed for that.

Gradient checkpointing re-runs forward hooks during recompute. A forward pre-hook on the
root model (and on ``model.base_model``) starts a *pass*; each site is reduced at most once
per pass, and gets at most one gradient hook per pass (on the first firing whose output
requires grad, so reentrant checkpointing, whose first forward runs without grad, also
works). A second call of a site in one pass outside backward (a shared module) is not
reduced but counted in ``Capture.repeats`` and reported by a warning.

Devices and dtypes: each sum is accumulated in float32 on the device of the site's tensor
(weights are copied there once per device), so models split by an accelerate
``device_map`` work; ``MaskedSum.result()`` gathers the sums on one device.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from lrm_interp.checks import checked_arguments, user_stacklevel
from lrm_interp.model.sites import Site, get_module, resolve_sites

if TYPE_CHECKING:
    from transformers import PreTrainedModel

STAGES = frozenset({"output", "input", "grad"})


class Reducer:
    """Receives tensors from hooked sites; override any of the ``on_*`` methods."""

    stages: frozenset[str] = frozenset()

    def on_output(self, site: str, t: torch.Tensor) -> None:  # t: [b, s, d_out]
        pass

    def on_input(self, site: str, t: torch.Tensor) -> None:  # t: [b, s, d_in]
        pass

    def on_grad(self, site: str, t: torch.Tensor) -> None:  # t: dL/d(output) [b, s, d_out]
        pass

    def reset(self) -> None:
        pass


class MaskedSum(Reducer):
    """Weighted sums over token positions, accumulated in float32.

    Args:
        stage: ``"output"``, ``"input"`` or ``"grad"`` (dL/d output).
        weights: ``[g, b, s]`` (or ``[b, s]`` = one group) token weights of the next forward
            pass; set again (``.weights = w`` or ``set_weights``) before each pass. Pad
            positions must carry weight 0 (:func:`pad_weights`); positions whose weight is 0
            in every group are dropped before the reduction, so even non-finite values there
            never count.
        square: accumulate ``t * t`` instead of ``t`` (second moments).
        device: where to keep the sums (default: the device of each site's tensor).

    Attributes:
        sums: ``site -> [g, d]`` float32, ``+= einsum("gbs,bsd->gd", w, t.float())``.
        counts: ``site -> [g]`` float32, ``+= w.sum((1, 2))`` (once per site and pass).
    """

    @checked_arguments
    def __init__(
        self,
        stage: str = "output",
        weights: torch.Tensor | None = None,
        *,
        square: bool = False,
        device: torch.device | str | None = None,
    ):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")
        self.stage = stage
        self.stages = frozenset({stage})
        self.square = square
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self._w: torch.Tensor | None = None
        self._w_dev: dict[torch.device, torch.Tensor] = {}
        self._keep_dev: dict[torch.device, torch.Tensor | None] = {}
        if weights is not None:
            self.set_weights(weights)

    @property
    def weights(self) -> torch.Tensor | None:
        return self._w

    @weights.setter
    def weights(self, w: torch.Tensor | None) -> None:
        self.set_weights(w)

    def set_weights(self, w: torch.Tensor | None) -> None:
        if w is not None:
            w = w.detach().float()
            if w.dim() == 2:
                w = w.unsqueeze(0)
            if w.dim() != 3:
                raise ValueError(f"weights must be [g, b, s] or [b, s], got shape {tuple(w.shape)}")
        self._w = w
        self._w_dev = {}
        self._keep_dev = {}

    def _weights_on(self, dev: torch.device, b: int, s: int) -> torch.Tensor:
        if self._w is None:
            raise RuntimeError("MaskedSum.weights is not set: set it before the forward pass")
        if self._w.shape[1:] != (b, s):
            raise ValueError(f"MaskedSum weights are {tuple(self._w.shape)} but the site tensor is [{b}, {s}, ...]")
        if dev not in self._w_dev:
            self._w_dev[dev] = self._w.to(dev)
        return self._w_dev[dev]

    def _add(self, site: str, t: torch.Tensor) -> None:
        if t.dim() == 2:
            t = t.unsqueeze(0)
        t = t.reshape(t.shape[0], t.shape[1], -1)
        w = self._weights_on(t.device, t.shape[0], t.shape[1])
        keep = self._keep_on(t.device)
        if keep is None:  # every position has weight somewhere: one fused reduction
            x = t.float()
            x = x * x if self.square else x
            s = torch.einsum("gbs,bsd->gd", w, x)
        else:  # gather only weighted rows, so non-finite values at pads never reach the sum
            x = t[keep].float()  # [n, d]
            x = x * x if self.square else x
            s = torch.einsum("gn,nd->gd", w[:, keep], x)
        c = w.sum(dim=(1, 2))
        if self.device is not None:
            s, c = s.to(self.device), c.to(self.device)
        if site in self.sums:
            self.sums[site] += s.to(self.sums[site].device)
            self.counts[site] += c.to(self.counts[site].device)
        else:
            self.sums[site], self.counts[site] = s, c

    def _keep_on(self, dev: torch.device) -> torch.Tensor | None:
        """``[b, s]`` bool of positions with a non-zero weight in any group (None: all)."""
        if dev not in self._keep_dev:
            keep = (cast(torch.Tensor, self._w) != 0).any(dim=0)  # set: _weights_on checked it
            self._keep_dev[dev] = None if bool(keep.all()) else keep.to(dev)
        return self._keep_dev[dev]

    def on_output(self, site, t):
        if self.stage == "output":
            self._add(site, t)

    def on_input(self, site, t):
        if self.stage == "input":
            self._add(site, t)

    def on_grad(self, site, t):
        if self.stage == "grad":
            self._add(site, t)

    def mean(self, site: str) -> torch.Tensor:
        """``[g, d]`` weighted mean (sums / counts; 0 where a group has no weight)."""
        c = self.counts[site].clamp_min(1e-12).unsqueeze(-1)
        return self.sums[site] / c

    def result(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.counts = {}, {}


class FullCapture(Reducer):
    """Stores full tensors, one per forward pass and site (only when explicitly asked)."""

    @checked_arguments
    def __init__(self, stage: str = "output", *, to_cpu: bool = True):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")
        self.stage = stage
        self.stages = frozenset({stage})
        self.to_cpu = to_cpu
        self.tensors: dict[str, list[torch.Tensor]] = {}

    def _keep(self, site, t):
        # Always a copy: the model may reuse or modify its activation buffers in place.
        t = t.detach()
        self.tensors.setdefault(site, []).append(t.to("cpu", copy=True) if self.to_cpu else t.clone())

    def on_output(self, site, t):
        if self.stage == "output":
            self._keep(site, t)

    def on_input(self, site, t):
        if self.stage == "input":
            self._keep(site, t)

    def on_grad(self, site, t):
        if self.stage == "grad":
            self._keep(site, t)

    def reset(self) -> None:
        self.tensors = {}


def pad_weights(attention_mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``[g, b, s]`` weights with pad positions (attention_mask == 0) set to 0."""
    m = attention_mask.float()
    if weights is None:
        return m.unsqueeze(0)
    w = weights.float()
    if w.dim() == 2:
        w = w.unsqueeze(0)
    return w * m.unsqueeze(0).to(w.device)


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for y in x:
            if isinstance(y, torch.Tensor):
                return y
    if isinstance(x, dict):
        for y in x.values():
            if isinstance(y, torch.Tensor):
                return y
    return None


def _in_backward() -> bool:
    """True while the autograd engine runs (where checkpointing recomputes forwards)."""
    fn = getattr(torch._C, "_current_graph_task_id", None)
    return fn is not None and fn() != -1


class Capture:
    """Hooks ``sites`` of ``model`` while active and feeds ``reducers``.

    Args:
        model: the model (any ``nn.Module``). Its root (and ``model.base_model`` when that is
            a different module) receives a forward pre-hook that starts a new *pass*.
        sites: ``None`` (all linear sites in the decoder layers), a regex, or names/Sites.
        reducers: objects with ``stages`` and ``on_output/on_input/on_grad``.

    Attributes:
        sites: the hooked :class:`~lrm_interp.model.sites.Site` list.
        passes: number of passes started so far.
        fired: number of site forward-hook calls, including checkpoint recomputation.
        repeats: ``site -> n`` calls of a site that were *not* reduced because the site had
            already been reduced in the same pass outside a backward (a module called twice
            in one forward); a warning names them when the capture exits.

    Each site is reduced at most once per pass (outputs/inputs) and gets at most one
    gradient tensor-hook per pass, so recomputation under gradient checkpointing (reentrant
    or not) changes nothing. Call :meth:`new_pass` to start a pass by hand when the forward
    does not go through ``model`` or ``model.base_model``.
    """

    def __init__(
        self, model: nn.Module, sites: Sequence[Site | str] | str | None = None, reducers: Iterable[Reducer] = ()
    ):
        self.model = model
        self.sites: list[Site] = resolve_sites(model, sites)
        self.reducers: list[Reducer] = list(reducers)
        stages = set().union(*(r.stages for r in self.reducers)) if self.reducers else set()
        unknown = stages - STAGES
        if unknown:
            raise ValueError(f"unknown reducer stages {sorted(unknown)}")
        self.want_out = "output" in stages
        self.want_in = "input" in stages
        self.want_grad = "grad" in stages
        self._by_stage = {st: [r for r in self.reducers if st in r.stages] for st in STAGES}
        self._handles: list = []
        self._seen: set[str] = set()
        self._grad_hooked: set[str] = set()
        self.fired = 0
        self.passes = 0
        self.repeats: dict[str, int] = {}

    # ------------------------------------------------------------------ passes
    def new_pass(self) -> None:
        """Start a new pass: every site may be reduced (and grad-hooked) once more."""
        self._seen = set()
        self._grad_hooked = set()
        self.passes += 1

    def _root_pre_hook(self, module, args, kwargs):
        self.new_pass()
        emb = kwargs.get("inputs_embeds")
        if (
            self.want_grad
            and isinstance(emb, torch.Tensor)
            and emb.is_floating_point()
            and not emb.requires_grad
            and torch.is_grad_enabled()
        ):
            kwargs = dict(kwargs, inputs_embeds=emb.detach().requires_grad_(True))
            return args, kwargs
        return None

    def _base_pre_hook(self, module, args):
        # Called right after the root's pre-hook when the forward goes through the root:
        # nothing was seen since, so no second pass. Called directly: a new pass.
        if self._seen or self._grad_hooked or self.passes == 0:
            self.new_pass()

    # ------------------------------------------------------------------ hooks
    def _make_hook(self, name: str):
        def hook(module, args, kwargs, output):
            self.fired += 1
            out = _first_tensor(output)
            if name not in self._seen:
                self._seen.add(name)
                if self.want_in:
                    x = args[0] if args and isinstance(args[0], torch.Tensor) else _first_tensor(kwargs)
                    if x is None:
                        raise RuntimeError(f"capture: site {name!r} was called without a tensor input")
                    for r in self._by_stage["input"]:
                        r.on_input(name, x.detach())
                if self.want_out:
                    if out is None:
                        raise RuntimeError(f"capture: site {name!r} returned no tensor")
                    for r in self._by_stage["output"]:
                        r.on_output(name, out.detach())
            elif not _in_backward():
                self.repeats[name] = self.repeats.get(name, 0) + 1
            if (
                self.want_grad
                and out is not None
                and out.requires_grad
                and torch.is_grad_enabled()
                and name not in self._grad_hooked
            ):
                self._grad_hooked.add(name)
                out.register_hook(self._make_grad_hook(name))
            return None

        return hook

    def _make_grad_hook(self, name: str):
        def ghook(g: torch.Tensor):
            for r in self._by_stage["grad"]:
                r.on_grad(name, g.detach())
            return None

        return ghook

    @staticmethod
    def _embed_requires_grad(module, args, output):
        if (
            isinstance(output, torch.Tensor)
            and output.is_floating_point()
            and not output.requires_grad
            and torch.is_grad_enabled()
        ):
            return output.detach().requires_grad_(True)
        return None

    # ------------------------------------------------------------------ context
    def __enter__(self) -> Capture:
        if self._handles:
            raise RuntimeError("this Capture is already active (contexts cannot be nested)")
        self.repeats = {}
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True))
            base = getattr(self.model, "base_model", None)
            if isinstance(base, nn.Module) and base is not self.model:
                self._handles.append(base.register_forward_pre_hook(self._base_pre_hook))
            for s in self.sites:
                mod = get_module(self.model, s.name)
                self._handles.append(mod.register_forward_hook(self._make_hook(s.name), with_kwargs=True))
            if self.want_grad:
                has_emb = hasattr(self.model, "get_input_embeddings")
                emb = cast("PreTrainedModel", self.model).get_input_embeddings() if has_emb else None
                if isinstance(emb, nn.Module):
                    self._handles.append(emb.register_forward_hook(self._embed_requires_grad))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
        if self.repeats and exc[0] is None:
            names = ", ".join(f"{k} (x{v})" for k, v in list(self.repeats.items())[:5])
            warnings.warn(
                f"capture: {len(self.repeats)} site(s) were called more than once in one forward "
                f"pass; only the first call of each pass was reduced: {names}",
                stacklevel=user_stacklevel(),
            )

    def remove(self) -> None:
        """Remove this capture's hooks (and only those)."""
        while self._handles:
            self._handles.pop().remove()

    @property
    def active(self) -> bool:
        return bool(self._handles)
