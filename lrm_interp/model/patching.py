"""Activation patching and steering: add α·v to a site's output at chosen positions.

::

    with add_to_outputs(model, {"model.layers.3.mlp.up_proj": (u_hat, mask)}, alpha=1.0):
        loss = ...          # patched forward (differentiable, hooks removed on exit)

``positions`` per site may be ``None`` (every position, e.g. steering during generation), a
``slice``, a list of ints, or a ``[s]`` / ``[b, s]`` mask (float or bool; float values
scale the addition). A mask is tied to a sequence length: during cached generation the
later steps have sequence length 1 and a longer mask then does not apply (those steps are
left unpatched; use ``None`` to steer every generated token). Any other length mismatch is
an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from lrm_interp.model.sites import get_module


def _position_mask(positions, b: int, s: int, device, dtype) -> torch.Tensor | None:
    """``[1 or b, s, 1]`` multiplier for the addition, or ``None`` = everywhere."""
    if positions is None:
        return None
    if isinstance(positions, slice):
        m = torch.zeros(s, device=device, dtype=dtype)
        m[positions] = 1
        return m.view(1, s, 1)
    if isinstance(positions, (list, tuple)):
        m = torch.zeros(s, device=device, dtype=dtype)
        bad = [p for p in positions if not -s <= p < s]
        if bad and s > 1:
            raise ValueError(f"patch positions {bad} are outside a sequence of length {s}")
        idx = [p for p in positions if -s <= p < s]
        if idx and not bad:
            m[torch.tensor(idx, device=device)] = 1
        return m.view(1, s, 1)
    t = torch.as_tensor(positions).to(device=device, dtype=dtype)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"a position mask must be [s] or [b, s], got shape {tuple(t.shape)}")
    if t.shape[-1] != s:
        if s == 1:  # an incremental decoding step: the mask was made for the prompt
            return torch.zeros(1, 1, 1, device=device, dtype=dtype)
        raise ValueError(f"position mask has length {t.shape[-1]} but the site output has sequence length {s}")
    if t.shape[0] not in (1, b):
        raise ValueError(f"position mask has batch {t.shape[0]} but the site output has batch {b}")
    return t.unsqueeze(-1)


@contextlib.contextmanager
def add_to_outputs(
    model: torch.nn.Module, additions: Mapping[str, tuple[torch.Tensor, object]], *, alpha: float = 1.0
) -> Iterator[None]:
    """Add ``alpha * vector`` to each named site's output at its positions while active.

    Args:
        model: the model; sites are named by module path (``model.layers.1.mlp.up_proj``).
        additions: ``{site_name: (vector [d_out], positions)}``; positions as in the module
            docstring. The vector is cast to the output's dtype and device.
        alpha: scale of every vector.

    Only this context's hooks are removed on exit, also when the body raises.
    """
    handles = []

    def make(name: str, vec: torch.Tensor, positions):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if out.shape[-1] != vec.shape[-1]:
                raise ValueError(f"patch vector for {name} has size {vec.shape[-1]}, output has {out.shape[-1]}")
            v = vec.to(device=out.device, dtype=out.dtype)
            if out.dim() == 2:  # unbatched [s, d]
                m = _position_mask(positions, 1, out.shape[0], out.device, out.dtype)
                new = out + alpha * (v if m is None else (m * v)[0])
            else:
                m = _position_mask(positions, out.shape[0], out.shape[1], out.device, out.dtype)
                new = out + alpha * (v if m is None else m * v)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    try:
        for name, (vec, positions) in additions.items():
            vec = torch.as_tensor(vec).detach()
            if vec.dim() != 1:
                raise ValueError(f"patch vector for {name} must be 1-D [d_out], got shape {tuple(vec.shape)}")
            mod = get_module(model, name)
            handles.append(mod.register_forward_hook(make(name, vec, positions)))
        yield
    finally:
        for h in handles:
            h.remove()


__all__ = ["add_to_outputs"]
