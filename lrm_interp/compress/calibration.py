"""Calibration data and the statistics collected from it.

Calibration data (``calib``) is accepted in one of three forms everywhere in the library
(activation/Hessian saliency, GPTQ), normalised by :func:`calibration_batches`:

- input ids ``[b, s]`` (or one sequence ``[s]``), an integer tensor: every token counts;
- a tokenizer output dict ``{"input_ids": [b, s], "attention_mask": [b, s]}`` (also a
  ``BatchEncoding``): padding (``attention_mask == 0``) is passed to the model and excluded
  from every statistic;
- for :func:`collect_hessians` only, a callable ``calib(model)`` that runs the forwards itself.

:func:`calibration_ids` builds ``[n, length]`` ids from the texts of annotated traces (a JSONL
file or a paper-layout directory, :func:`lrm_interp.data.loading.load_dataset`) or, by
default, from generated toy tasks. Rows longer than the model's context
(:func:`~lrm_interp.model.forward.context_limit`) are refused by every statistic collected from
them (:func:`check_calibration_context`: :func:`collect_hessians`, :func:`layer_hessians`, so
GPTQ, SparseGPT and Wanda): positions past it are inputs the model was never trained for.

Statistics: :class:`HessianReducer` / :func:`collect_hessians` give ``H = 2·XᵀX/n`` per site
(``X [n, in]`` the site's calibration inputs). :func:`layer_hessians` drives GPTQ layer by
layer: with ``sequential=True`` (default) the decoder layers are processed in order; each
layer's Hessians are collected when the consumer asks for that layer, i.e. with all earlier
layers already quantized (the forward stops once the layer's sites have fired), so only one
layer's ``[in, in]`` Hessians are in memory at a time. Within a layer every site sees the
layer's input computed by the quantized earlier layers (GPTQ's non-"true-sequential" mode).
``sequential=False``: all Hessians from one pass over the unquantized model.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import groupby
from typing import Any

import torch
from tqdm.auto import tqdm

from lrm_interp.checks import check_int, check_seed, checked_arguments, shown_value, user_stacklevel
from lrm_interp.data.loading import load_dataset
from lrm_interp.data.toy_tasks import generate_dataset
from lrm_interp.model.capture import Capture, Reducer
from lrm_interp.model.forward import context_limit, input_device
from lrm_interp.model.provenance import NonFiniteError, non_finite_count
from lrm_interp.model.sites import Site, get_module
from lrm_interp.model.vocab import check_ids_fit

#: input ids ``[b, s]`` / ``[s]`` or a tokenizer output dict with ``input_ids`` (+ ``attention_mask``)
CalibData = torch.Tensor | Mapping[str, Any]
#: :data:`CalibData` or a callable running calibration forwards on the model
HessianCalib = CalibData | Callable[[torch.nn.Module], None]


def calibration_batches(calib: CalibData, batch_size: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Batches ``(input_ids [b', s], attention_mask [b', s] | None)`` of ``batch_size`` rows.

    ``calib``: integer ids ``[b, s]`` or ``[s]`` (a list of ids is converted), or a mapping with
    ``input_ids`` and optionally ``attention_mask`` of the same shape (1 = real token, 0 =
    padding; consumers exclude the zeros). Tensors are sliced, not copied or moved.
    """
    if callable(calib) and not isinstance(calib, torch.Tensor):
        raise TypeError("calibration batches need input ids or a tokenizer output dict, got a callable")
    if isinstance(calib, Mapping):
        if "input_ids" not in calib:
            raise KeyError(f"calibration dict has no 'input_ids' (keys: {sorted(calib)})")
        ids, att = torch.as_tensor(calib["input_ids"]), calib.get("attention_mask")
        att = None if att is None else torch.as_tensor(att)
    else:
        try:
            ids, att = torch.as_tensor(calib), None
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(
                f"calib must be input ids [b, s], a tokenizer output dict or a callable, got {type(calib).__name__}"
            ) from e
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"calibration input ids must be integers, got dtype {ids.dtype}")
    if ids.dim() == 1:
        ids = ids[None]
        att = None if att is None else att.reshape(1, -1)
    if ids.dim() != 2:
        raise ValueError(f"calibration input ids must be [batch, seq] or [seq], got shape {tuple(ids.shape)}")
    if att is not None and tuple(att.shape) != tuple(ids.shape):
        raise ValueError(f"calibration attention_mask shape {tuple(att.shape)} != input_ids shape {tuple(ids.shape)}")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {shown_value(batch_size)}")
    b = int(batch_size)
    for i in range(0, ids.shape[0], b):
        yield ids[i : i + b], None if att is None else att[i : i + b]


@checked_arguments
def calibration_texts(data: str | os.PathLike | None = None, *, n_per_family: int = 16, seed: int = 77) -> list[str]:
    """The texts (prompt + response) of the traces in ``data`` (JSONL file or paper-layout
    directory), or of ``generate_dataset(n_per_family, seed=seed)`` toy tasks when ``data`` is ``None``."""
    ds = generate_dataset(n_per_family, seed=seed) if data is None else load_dataset(data)
    return [t.text for t in ds]


@checked_arguments
def calibration_ids(
    tokenizer: Any,
    data: str | os.PathLike | None = None,
    *,
    length: int = 256,
    n_per_family: int = 16,
    seed: int = 77,
    separator: str | None = None,
) -> torch.Tensor:
    """Calibration ids ``[n, length]`` (int64) from :func:`calibration_texts` (``data`` or toy tasks).

    The texts are tokenized without special tokens and concatenated — each text on its own
    (``separator=None``), or joined as ``text + separator`` for every text and tokenized in one
    call — then cut into ``n = max(1, n_tokens // length)`` rows; the remainder is dropped
    (with fewer than ``length`` tokens the single row holds them all).

    ``tokenizer`` must be a tokenizer (a torch model there is a ``TypeError``); ``length`` and
    ``n_per_family`` are ``int`` >= 1 and ``seed`` a seed (a bool, ``1.5`` or
    ``"256"`` is refused: ``ValueError`` naming it); ``separator`` a string or ``None``. A
    ``length`` above the model's context is refused where the rows are used
    (:func:`check_calibration_context`).
    """
    if isinstance(tokenizer, torch.nn.Module) or not callable(tokenizer):  # the model there (H15-CLM)
        hint = " (a torch model: pass its tokenizer, calibration_ids(tokenizer, ...))" if callable(tokenizer) else ""
        raise TypeError(
            f"calibration_ids: tokenizer must be a tokenizer (called on text), got {type(tokenizer).__name__}{hint}"
        )
    length = check_int("length", length, min=1)
    check_int("n_per_family", n_per_family, min=1)
    check_seed("seed", seed)
    if separator is not None and not isinstance(separator, str):
        raise ValueError(f"separator must be a string or None, got {shown_value(separator)}")
    texts = calibration_texts(data, n_per_family=n_per_family, seed=seed)
    if separator is None:
        ids = torch.tensor(
            [i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]], dtype=torch.long
        )
    else:
        text = "".join(t + separator for t in texts)
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() == 0:
        raise ValueError(f"no calibration tokens in {data if data is not None else 'the toy tasks'}")
    n = max(1, ids.numel() // length)
    return ids[: n * length].view(n, -1)


def calibration_shape(calib: Any) -> tuple[int, int] | None:
    """``(rows, tokens per row)`` of calibration ids ``[b, s]`` / ``[s]`` or a tokenizer output
    dict; ``None`` for a callable or anything else (:func:`calibration_batches` says what is wrong)."""
    if callable(calib) and not isinstance(calib, torch.Tensor):
        return None
    ids = calib.get("input_ids") if isinstance(calib, Mapping) else calib
    try:
        shape = tuple(torch.as_tensor(ids).shape)
    except (TypeError, ValueError, RuntimeError):
        return None
    if len(shape) == 1:
        return 1, int(shape[0])
    return (int(shape[0]), int(shape[1])) if len(shape) == 2 else None


def check_calibration_context(model: torch.nn.Module, calib: Any) -> None:
    """Refuse calibration rows longer than ``model``'s context (the positions its config states,
    :func:`~lrm_interp.model.forward.context_limit`): ``ValueError`` naming both lengths. The
    statistics of the positions past it (Hessians, activation norms) come from inputs the model
    never sees in use (they were accepted without a word, H10-CLX). A callable ``calib`` and a
    model whose config states no context are not checked."""
    shape = calibration_shape(calib)
    limit, where = context_limit(model)
    if shape is None or limit is None or shape[1] <= limit:
        return
    raise ValueError(
        f"calibration rows of {shape[1]} tokens are longer than the model's context ({limit} positions, {where}): "
        f"their statistics past position {limit} come from inputs the model never sees; cut them to at most "
        f"{limit} tokens (calibration_ids(length=...))"
    )


def check_calibration_ids(model: torch.nn.Module, calib: Any) -> None:
    """Refuse calibration ids beyond ``model``'s input embedding
    (:func:`~lrm_interp.model.vocab.check_ids_fit`: ``ValueError`` naming the id and the rows),
    before any weight changes: ids made with another model's tokenizer ended in torch's raw
    "index out of range in self" after the first layers were quantized (H15-GCO / H15-GCT). A
    callable ``calib`` and ids :func:`calibration_batches` refuses are not checked here."""
    if callable(calib) and not isinstance(calib, torch.Tensor):
        return
    ids = calib.get("input_ids") if isinstance(calib, Mapping) else calib
    try:
        t = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError):
        return
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        return
    check_ids_fit(model, t, "calibration (calib=)")


def calibration_size(calib: Any) -> dict[str, int] | None:
    """``{"rows", "tokens"}`` of calibration ids ``[b, s]`` / ``[s]`` or a tokenizer output dict
    (``tokens``: those that count, padding excluded), as a quantization report records it; ``None``
    for a callable or anything :func:`calibration_shape` cannot read."""
    shape = calibration_shape(calib)
    if shape is None:
        return None
    att = calib.get("attention_mask") if isinstance(calib, Mapping) else None
    tokens = int(torch.as_tensor(att).bool().sum()) if att is not None else shape[0] * shape[1]
    return {"rows": shape[0], "tokens": tokens}


def check_calibration_size(sites: Sequence[Site], calib: Any) -> None:
    """Warn, naming the counts, when the calibration has fewer tokens than the widest input of
    ``sites``: that site's Hessian ``[in, in]`` has rank at most the token count, so GPTQ on it is
    little more than damped RTN and a Hessian sensitivity is drawn from a handful of inputs (one
    trace of one character was used without a word, H11-CAL1). The stated minimum is that width;
    a callable ``calib`` is not checked (its tokens are unknown before it runs)."""
    size = calibration_size(calib)
    if size is None or not sites:
        return
    widest = max(sites, key=lambda s: s.in_features)
    if size["tokens"] < widest.in_features:
        warnings.warn(
            f"calibration has {size['tokens']} token(s) in {size['rows']} row(s), fewer than the "
            f"{widest.in_features} inputs of {widest.name}: its Hessian has rank at most {size['tokens']}, "
            f"so GPTQ / Hessian sensitivity there is little more than damped RTN; give at least "
            f"{widest.in_features} calibration tokens (more or longer traces)",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


class HessianReducer(Reducer):
    """Accumulates ``XᵀX`` ``[in, in]`` (float32, on the input's device) and token counts per site.

    ``attention_mask [b, s]`` (set per batch; ``None`` = all tokens) selects the tokens that count.
    """

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
        """``2·XᵀX/n`` ``[in, in]`` per site."""
        return {k: 2 * v / max(self.n[k], 1) for k, v in self.H.items()}


class _Stop(Exception):
    """Raised by a forward hook once every requested site has fired (ends the forward early)."""


@checked_arguments
def collect_hessians(
    model: torch.nn.Module,
    sites: Sequence[Site],
    calib: HessianCalib,
    *,
    batch_size: int = 8,
    stop_early: bool = True,
    progress: bool = True,
    desc: str = "Hessians",
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``({site: 2·XᵀX/n [in, in]}, {site: tokens n})`` from calibration data (module docs: ids
    ``[b, s]``, a tokenizer output dict with padding excluded, or a callable running forwards).

    ``stop_early``: abort each forward once every requested site has fired (exact: later
    modules cannot change earlier inputs). ``progress``: a bar over the calibration batches.
    """
    check_calibration_context(model, calib)
    red = HessianReducer()
    names = {s.name for s in sites}
    with torch.no_grad(), Capture(model, list(sites), [red]):
        if callable(calib) and not isinstance(calib, torch.Tensor):
            calib(model)
        else:
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
                batches = list(calibration_batches(calib, batch_size))  # views of calib
                for ids, att in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress):
                    fired.clear()
                    red.attention_mask = att
                    kw = {} if att is None else {"attention_mask": att.to(dev)}
                    try:
                        model(input_ids=ids.to(dev), use_cache=False, **kw)
                    except _Stop:
                        pass
            finally:
                for h in handles:
                    h.remove()
    missing = names - set(red.H)
    if missing:
        raise RuntimeError(f"calibration forward never reached sites {sorted(missing)[:5]}")
    for s in sites:  # NaN inputs: GPTQ died in a Cholesky "not positive-definite" (H31-NANFWD)
        if non_finite_count(red.H[s.name]):
            raise NonFiniteError(
                f"{s.name}: its calibration inputs hold NaN or infinite values: the model's forward is broken (its "
                "config.json, e.g. a norm's epsilon at or below 0 or its rope scaling, or weights too large for its "
                "dtype); its Hessian cannot be used"
            )
    return red.hessians(), red.n


@checked_arguments
def layer_hessians(
    model: torch.nn.Module,
    sites: Sequence[Site],
    calib: HessianCalib,
    *,
    sequential: bool = True,
    batch_size: int = 8,
    progress: bool = True,
) -> Iterator[tuple[list[Site], dict[str, torch.Tensor]]]:
    """Yield ``(sites of one decoder layer, {site: H [in, in]})`` layer by layer (module docs).

    ``sequential=True``: layers in increasing order (sites outside the layer stack last), each
    layer's Hessians collected only when the consumer asks for it, so a consumer that
    quantizes a layer's sites before taking the next item gives the next layer inputs from
    the quantized model. ``sequential=False``: one item, every site, from the unchanged model.
    """
    if calib is None:
        raise ValueError("GPTQ needs calibration data: calib=input_ids [b, s] (or tokenizer output / callable)")
    check_calibration_context(model, calib)  # before the first layer is compressed
    check_calibration_ids(model, calib)  # ids of another model's tokenizer (H15-GCO)
    sites = list(sites)
    check_calibration_size(sites, calib)
    if sequential:
        order = sorted(sites, key=lambda s: (s.layer is None, s.layer if s.layer is not None else 0))
        groups = [list(g) for _, g in groupby(order, key=lambda s: s.layer)]
    else:
        groups = [sites]

    def gen() -> Iterator[tuple[list[Site], dict[str, torch.Tensor]]]:
        for grp in groups:
            layer = grp[0].layer if sequential else None
            desc = "Hessians" if layer is None else f"Hessians layer {layer}"
            hessians, _ = collect_hessians(model, grp, calib, batch_size=batch_size, progress=progress, desc=desc)
            yield grp, hessians

    return gen()  # arguments checked now, Hessians collected lazily
