"""Mask-aware GPTQ (Frantar et al. 2022): column-by-column quantization with error feedback.

For ``W [out, in]`` and the input Hessian ``H = 2 XᵀX / n`` (``X [n, in]`` calibration inputs
of the site; damped by ``percdamp`` × mean diagonal; dead inputs with ``H_jj = 0`` get
``H_jj = 1`` and their unprotected weights set to 0), let ``U`` be the upper Cholesky factor
of ``H⁻¹``. Columns are quantized left to right; the error of column ``i`` divided by
``U_ii`` is pushed onto the not-yet-quantized columns ``j > i`` with coefficients ``U_ij``.
Lazy batching: inside a block of ``blocksize`` columns updates are applied at once per
column; updates to the columns after the block are accumulated and applied when the block
ends. Group parameters are fitted when a group starts, on the group's weights including
every update pushed so far (pending lazy updates are applied first), so the result does
not depend on ``blocksize`` (checked against a loop reference in tests).

Protected weights (``mask=True``): excluded from every group fit, kept at their original
value, contribute zero error (nothing is pushed from them) and receive no update (they are
reset to their original value after each update). The error of an unprotected weight flows
only to unprotected, not-yet-quantized weights of the same row.

Model level (:func:`gptq_quantize_model_`): with ``sequential=True`` (default) the decoder
layers are processed in order; each layer's Hessians are collected from the calibration
tokens with all earlier layers already quantized (the forward stops once the layer's sites
have fired), so only one layer's ``[in, in]`` Hessians are in memory at a time. Within a
layer every site sees the layer's input computed by the quantized earlier layers (GPTQ's
non-"true-sequential" mode). ``sequential=False``: all Hessians from one unquantized pass.
"""

from __future__ import annotations

from itertools import groupby
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from lrm_interp.model.capture import Capture, Reducer
from lrm_interp.model.sites import Site, get_module
from lrm_interp.compress.quant.rtn import GroupParams, QuantizedTensor, fit_params
from lrm_interp.model.forward import input_device


class HessianReducer(Reducer):
    """Accumulates ``XᵀX`` ``[in, in]`` (float32, on the input's device) and token counts per site."""

    stages = frozenset({"input"})

    def __init__(self, attention_mask: torch.Tensor | None = None):
        self.H: dict[str, torch.Tensor] = {}
        self.n: dict[str, int] = {}
        self.attention_mask = attention_mask

    def on_input(self, site: str, t: torch.Tensor) -> None:
        x = t.reshape(-1, t.shape[-1]).float()
        if self.attention_mask is not None:
            x = x[self.attention_mask.reshape(-1).to(x.device).bool()]
        h = x.T @ x
        if site in self.H:
            self.H[site] += h
            self.n[site] += x.shape[0]
        else:
            self.H[site], self.n[site] = h, x.shape[0]

    def hessians(self) -> dict[str, torch.Tensor]:
        """``2·XᵀX/n`` per site."""
        return {k: 2 * v / max(self.n[k], 1) for k, v in self.H.items()}


def _gptq_core(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
               mask: torch.Tensor | None, blocksize: int, percdamp: float):
    """Returns ``(codes uint8 [out, in], scale, zero [out, n_groups], g, dequantized float32 with kept values)``."""
    W0 = W.float().clone()
    out, inn = W0.shape
    if tuple(H.shape) != (inn, inn):
        raise ValueError(f"Hessian shape {tuple(H.shape)} != [{inn}, {inn}]")
    prot = (torch.zeros_like(W0, dtype=torch.bool) if mask is None
            else mask.to(device=W0.device, dtype=torch.bool))
    if tuple(prot.shape) != (out, inn):
        raise ValueError(f"mask shape {tuple(prot.shape)} != weight shape {(out, inn)}")
    H = H.to(device=W0.device, dtype=torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    Wq = W0.clone()
    Wq[:, dead] = torch.where(prot[:, dead], Wq[:, dead], torch.zeros_like(Wq[:, dead]))
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(inn, device=H.device)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    g = inn if group_size is None else int(group_size)
    n_groups = -(-inn // g)
    scale = torch.ones(out, n_groups, device=W0.device)
    zero = torch.zeros(out, n_groups, device=W0.device)
    codes = torch.zeros(out, inn, dtype=torch.uint8, device=W0.device)
    Q = torch.zeros_like(W0)
    maxq = 2 ** int(bits) - 1
    s = z = None
    for i1 in range(0, inn, blocksize):
        i2 = min(i1 + blocksize, inn)
        W1 = Wq[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:
                end = min(col + g, inn)
                grp = W1[:, i:min(end - i1, i2 - i1)]
                if end > i2:  # the group reaches past this block: apply its pending lazy updates
                    rest = Wq[:, i2:end] - Err1[:, :i] @ U[i1:i1 + i, i2:end]
                    rest = torch.where(prot[:, i2:end], W0[:, i2:end], rest)
                    grp = torch.cat([grp, rest], dim=1)
                p = fit_params(grp, bits, group_size=None, symmetric=symmetric, mask=prot[:, col:end])
                s, z = p.scale[:, 0], p.zero[:, 0]
                scale[:, col // g], zero[:, col // g] = s, z
            w = W1[:, i]
            qc = torch.clamp(torch.round(w / s) + z, 0, maxq)
            codes[:, col] = qc.to(torch.uint8)
            p_col = prot[:, col]
            q = torch.where(p_col, W0[:, col], (qc - z) * s)
            Q[:, col] = q
            err = torch.where(p_col, torch.zeros_like(w), (w - q) / U1[i, i])
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            W1[:, i:] = torch.where(prot[:, col:i2], W0[:, col:i2], W1[:, i:])
            Err1[:, i] = err
        Wq[:, i2:] -= Err1 @ U[i1:i2, i2:]
        Wq[:, i2:] = torch.where(prot[:, i2:], W0[:, i2:], Wq[:, i2:])
    return codes, scale, zero, g, Q


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, *, group_size: int | None = 128,
                  symmetric: bool = False, mask: torch.Tensor | None = None, blocksize: int = 128,
                  percdamp: float = 0.01) -> torch.Tensor:
    """Fake-quantized copy of ``W [out, in]`` (dtype and device kept) given ``H [in, in]``;
    ``mask=True`` entries bit-exact."""
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    *_, Q = _gptq_core(W, H, bits, group_size, symmetric, mask, blocksize, percdamp)
    Q = Q.to(W.dtype)
    if mask is not None:
        Q = torch.where(mask.to(device=W.device, dtype=torch.bool), W, Q)
    return Q


def gptq_quantize_tensor(W: torch.Tensor, H: torch.Tensor, bits: int, *, group_size: int | None = 128,
                         symmetric: bool = False, mask: torch.Tensor | None = None, blocksize: int = 128,
                         percdamp: float = 0.01, scale_dtype: torch.dtype = torch.float32,
                         value_dtype: torch.dtype | None = None) -> QuantizedTensor:
    """GPTQ returning codes, per-group parameters and the kept values (:class:`QuantizedTensor`)."""
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    codes, scale, zero, g, _ = _gptq_core(W, H, bits, group_size, symmetric, mask, blocksize, percdamp)
    p = GroupParams(scale, zero, 2 ** int(bits) - 1, g)
    m = None if mask is None else mask.to(device=W.device, dtype=torch.bool)
    return QuantizedTensor.from_params(W, codes, p, m, bits, scale_dtype=scale_dtype, value_dtype=value_dtype)


class _Stop(Exception):
    pass


def _ids_and_mask(calib) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(calib, Mapping):
        return calib["input_ids"], calib.get("attention_mask")
    if isinstance(calib, torch.Tensor):
        if calib.dim() == 1:
            calib = calib[None]
        return calib, None
    raise TypeError(f"calib must be input ids [b, s], a tokenizer output dict or a callable, got {type(calib).__name__}")


def collect_hessians(model: torch.nn.Module, sites: Sequence[Site],
                     calib: torch.Tensor | Mapping | Callable[[torch.nn.Module], None], *, batch_size: int = 8,
                     stop_early: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``(2·XᵀX/n per site, tokens per site)`` from calibration ``input_ids [b, s]``, a tokenizer
    output dict (padding excluded through its attention mask) or a callable running forwards.

    ``stop_early``: abort each forward once every requested site has fired (exact: later
    modules cannot change earlier inputs).
    """
    red = HessianReducer()
    names = {s.name for s in sites}
    with torch.no_grad(), Capture(model, list(sites), [red]):
        if callable(calib) and not isinstance(calib, torch.Tensor):
            calib(model)
        else:
            ids, att = _ids_and_mask(calib)
            dev = input_device(model)
            fired: set[str] = set()
            handles = []
            if stop_early:
                def hook(name):
                    def fn(mod, args, out):
                        fired.add(name)
                        if fired >= names:
                            raise _Stop
                    return fn
                handles = [get_module(model, s.name).register_forward_hook(hook(s.name)) for s in sites]
            try:
                for i in range(0, ids.shape[0], batch_size):
                    fired.clear()
                    red.attention_mask = None if att is None else att[i:i + batch_size]
                    kw = {} if att is None else {"attention_mask": att[i:i + batch_size].to(dev)}
                    try:
                        model(input_ids=ids[i:i + batch_size].to(dev), use_cache=False, **kw)
                    except _Stop:
                        pass
            finally:
                for h in handles:
                    h.remove()
    missing = names - set(red.H)
    if missing:
        raise RuntimeError(f"calibration forward never reached sites {sorted(missing)[:5]}")
    return red.hessians(), red.n


def gptq_quantize_model_(model: torch.nn.Module, sites: Sequence[Site], *, bits: int, group_size: int | None,
                         symmetric: bool, masks: Mapping[str, object], calib, progress: bool = True,
                         blocksize: int = 128, percdamp: float = 0.01, sequential: bool = True,
                         batch_size: int = 8, on_tensor: Callable[[str, QuantizedTensor], None] | None = None
                         ) -> tuple[int, int]:
    """GPTQ every site in place (see module docs). Returns ``(weights, protected weights)``.

    ``on_tensor(site, QuantizedTensor)``: called per site with the codes (optional).
    """
    from lrm_interp.model.weights import dense_mask, set_weight_matrix, weight_matrix

    if calib is None:
        raise ValueError("GPTQ needs calibration data: calib=input_ids [b, s] (or tokenizer output / callable)")
    sites = list(sites)
    if sequential:
        order = sorted(sites, key=lambda s: (s.layer is None, s.layer if s.layer is not None else 0))
        groups = [list(g) for _, g in groupby(order, key=lambda s: s.layer)]
    else:
        groups = [sites]
    n_w = n_p = 0
    bar = tqdm(total=len(sites), desc=f"GPTQ {bits}-bit", disable=not progress, unit="site")
    for grp in groups:
        Hs, _ = collect_hessians(model, grp, calib, batch_size=batch_size)
        for s in grp:
            mod = get_module(model, s.name)
            W = weight_matrix(mod)
            m = dense_mask(masks.get(s.name), tuple(W.shape))
            m = None if m is None else m.to(W.device)
            H = Hs.pop(s.name)
            if on_tensor is not None:
                qt = gptq_quantize_tensor(W, H, bits, group_size=group_size, symmetric=symmetric, mask=m,
                                          blocksize=blocksize, percdamp=percdamp)
                on_tensor(s.name, qt)
                Wq = qt.dequantize(W.dtype)
                if m is not None:
                    Wq = torch.where(m, W, Wq)
            else:
                Wq = gptq_quantize(W, H, bits, group_size=group_size, symmetric=symmetric, mask=m,
                                   blocksize=blocksize, percdamp=percdamp)
            set_weight_matrix(mod, Wq)
            n_w += W.numel()
            n_p += int(m.sum()) if m is not None else 0
            bar.update(1)
        del Hs
    bar.close()
    return n_w, n_p
