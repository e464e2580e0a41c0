"""How far a compressed model moves from its original on annotated traces (no generation).

Two numbers per pair of models, over the same tokenized traces:

- **KL** — mean over response tokens of KL(p_ref ‖ p_model) of the next-token distributions
  (nats per token): position t's distributions predict token t+1, for every t from the
  position predicting the first response token to the second-to-last position;
- **span NLL** — mean cross-entropy of the tokens of the chosen behaviours' spans given the
  whole prefix (positions from :func:`lrm_interp.data.tokens.target_positions`), for both models.

Used by ``examples/protection_smollm2.py`` for models that cannot solve the toy tasks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lrm_interp.data.tokens import EncodedTrace, target_positions
from lrm_interp.data.traces import TARGET_BEHAVIORS
from lrm_interp.model.forward import input_device
from lrm_interp.model.provenance import model_record, swapped_compression
from lrm_interp.model.vocab import check_ids_fit, check_tokenizer_fits, embedding_rows

#: the warning for a model measured against itself (H14-DVS)
SAME_MODEL = "divergence of a model with itself is 0 by construction"


@dataclass(frozen=True)
class Divergence:
    """Totals over the traces; ``kl``, ``nll``, ``nll_ref`` are per-token means."""

    kl: float
    nll: float
    nll_ref: float
    tokens: int
    span_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    dev = input_device(model)
    return model(input_ids=ids[None].to(dev), use_cache=False).logits[0]


def _same_weights(ref: Any, model: Any) -> bool:
    """``ref`` and ``model`` are one object, or hold the very same parameter tensors (no copy)."""
    if ref is model:
        return True
    pr, pm = list(ref.parameters()), list(model.parameters())
    return bool(pr) and len(pr) == len(pm) and all(a is b for a, b in zip(pr, pm))


def check_pair(ref: Any, model: Any, encoded: Sequence[EncodedTrace], tokenizer: Any = None) -> None:
    """What :func:`divergence` refuses or warns about before any forward pass (cheap: no weights
    fingerprint). ``ValueError`` when the reference's record holds compression steps that
    ``model``'s lacks (:func:`~lrm_interp.model.provenance.swapped_compression`, ``compare``'s rule;
    H14-DVW), when the two input embeddings differ in size, when ``tokenizer`` is not theirs
    (:func:`~lrm_interp.model.vocab.check_tokenizer_fits`) or a trace holds an id beyond the
    embedding (H14-TOK); a ``UserWarning`` (:data:`SAME_MODEL`) when both are the same weights (H14-DVS)."""
    swapped = swapped_compression({"record": model_record(ref).to_dict()}, {"record": model_record(model).to_dict()})
    if swapped:
        raise ValueError(
            f"divergence: the reference is {swapped} and the compared model is not: did you swap "
            "reference and compressed? (pass the full-precision model first: divergence(ref, compressed, ...))"
        )
    rr, rm = embedding_rows(ref), embedding_rows(model)
    if rr is not None and rm is not None and rr != rm:
        raise ValueError(
            f"divergence: the reference's input embedding has {rr} rows but the compared model's has {rm}: "
            "two different models? compare a model with its own compressed copy"
        )
    if tokenizer is not None:
        check_tokenizer_fits(ref, tokenizer, "divergence")
    for e in encoded:
        check_ids_fit(ref, e.input_ids, f"divergence: trace {e.trace_id}")
    if _same_weights(ref, model):
        warnings.warn(
            f"{SAME_MODEL}: the reference and the compared model are the same weights (did you mean "
            "q = copy.deepcopy(model) before compressing q?)",
            UserWarning,
            stacklevel=4,  # check_pair, no_grad's wrapper, divergence: the caller's line
        )


@torch.no_grad()
def divergence(
    ref,
    model,
    encoded: Sequence[EncodedTrace],
    *,
    behaviors: Sequence[str] = TARGET_BEHAVIORS,
    chunk: int = 512,
    progress: bool = False,
    tokenizer: Any = None,
) -> Divergence:
    """KL(ref ‖ model) per response token and span NLL of ``behaviors`` for both models.

    One trace at a time; the ``[seq, vocab]`` log-probabilities are formed ``chunk`` positions
    at a time in float32. ``ref`` and ``model`` may live on different devices.

    Refused before any forward pass (:func:`check_pair`): the arguments swapped (``ref``'s record
    holds compression steps ``model``'s lacks), two models of other vocabularies, traces encoded by
    another model's tokenizer (``tokenizer``, when given, is checked too); the same weights passed
    twice warn (KL 0 by construction).
    """
    check_pair(ref, model, encoded, tokenizer)
    kl_sum, n_kl, n_span = 0.0, 0, 0
    nll, nll_ref = 0.0, 0.0
    for e in tqdm(encoded, desc="divergence", disable=not progress, unit="trace"):
        ids = e.input_ids
        r0 = max(e.response_start - 1, 0)  # the position predicting the first response token
        want = torch.zeros(len(ids), dtype=torch.bool)
        want[r0 : len(ids) - 1] = True
        tgt = torch.full((len(ids),), -1, dtype=torch.long)  # target token of span positions
        for sp in e.spans:
            if sp.behavior in behaviors:
                p0, p1 = target_positions(sp)
                tgt[p0:p1] = ids[p0 + 1 : p1 + 1]
        if not want.any() and not (tgt >= 0).any():
            continue
        a, b = _logits(ref, ids), _logits(model, ids)
        for c0 in range(0, len(ids), chunk):
            sl = slice(c0, c0 + chunk)
            lp_r = F.log_softmax(a[sl].float().cpu(), -1)
            lp_m = F.log_softmax(b[sl].float().cpu(), -1)
            w = want[sl]
            kl_sum += float((lp_r[w].exp() * (lp_r[w] - lp_m[w])).sum())
            n_kl += int(w.sum())
            t = tgt[sl]
            s = t >= 0
            if s.any():
                nll -= float(lp_m[s].gather(1, t[s, None]).sum())
                nll_ref -= float(lp_r[s].gather(1, t[s, None]).sum())
                n_span += int(s.sum())
    if n_kl == 0:
        raise ValueError(f"no response tokens in {len(encoded)} traces")
    return Divergence(
        kl=kl_sum / n_kl, nll=nll / max(n_span, 1), nll_ref=nll_ref / max(n_span, 1), tokens=n_kl, span_tokens=n_span
    )


__all__ = ["SAME_MODEL", "Divergence", "check_pair", "divergence"]
