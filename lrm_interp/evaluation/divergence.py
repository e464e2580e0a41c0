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

import difflib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lrm_interp.checks import check_int, checked_arguments, refuse_string, shown_value, user_stacklevel
from lrm_interp.data.tokens import EncodedTrace, target_positions
from lrm_interp.data.traces import BEHAVIORS, TARGET_BEHAVIORS
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


def _equal_weights(ref: Any, model: Any) -> bool:
    """``ref`` and ``model`` are two objects whose parameters are all equal in value (``torch.equal``
    per parameter, stopping at the first that differs): an unchanged copy, e.g. ``q =
    copy.deepcopy(model)`` whose compressed copy was discarded (H15-DVZ). ``False`` when it cannot be
    told (other shapes or dtypes, weights on the meta device, tensors that cannot be compared)."""
    pr, pm = list(ref.parameters()), list(model.parameters())
    if not pr or len(pr) != len(pm):
        return False
    try:
        for a, b in zip(pr, pm):
            if a.shape != b.shape or a.dtype != b.dtype or a.is_meta or b.is_meta:
                return False
            if not torch.equal(a, b if b.device == a.device else b.to(a.device)):
                return False
    except (RuntimeError, TypeError):
        return False
    return True


def _encoded_list(encoded: Any) -> list[EncodedTrace]:
    """``encoded`` as a list of :class:`EncodedTrace`, else ``TypeError`` naming the fix: a dataset
    failed with "'ReasoningTrace' object has no attribute 'input_ids'" and a tokenizer with "not
    iterable" (H15-DVD, H15-DVT)."""
    fix = "encode the traces first: [encode_trace(tokenizer, t) for t in dataset]"
    if isinstance(encoded, EncodedTrace):
        raise TypeError("divergence: encoded must be a list of EncodedTrace, got one EncodedTrace: write [encoded]")
    if isinstance(encoded, (str, bytes)) or not isinstance(encoded, Iterable):
        raise TypeError(f"divergence: encoded must be a list of EncodedTrace ({fix}), got {type(encoded).__name__}")
    items = list(encoded)
    bad = next((e for e in items if not isinstance(e, EncodedTrace)), None)
    if bad is not None:
        raise TypeError(
            f"divergence: encoded must be a list of EncodedTrace ({fix}), got a {type(encoded).__name__} "
            f"holding {type(bad).__name__}"
        )
    return items


def _check_behaviors(behaviors: Any, encoded: Sequence[EncodedTrace]) -> tuple[str, ...]:
    """The behaviours given to :func:`divergence`, once they can be measured: ``ValueError`` naming
    the behaviours the traces hold when one is neither a known behaviour (:data:`BEHAVIORS`) nor a
    label of the traces (a typo: "did you mean"), or when none has a span in ``encoded`` (its span
    NLL was 0.0 over 0 tokens, H15-DVB). A known behaviour absent from these traces beside one they
    hold is fine (the NLL is over the spans there are). A string is refused
    (:func:`~lrm_interp.checks.refuse_string`: ``"deduction"`` matched by substring)."""
    refuse_string("behaviors", behaviors, "a list of behaviour labels")
    if not isinstance(behaviors, Iterable) or not all(isinstance(b, str) for b in behaviors):
        raise TypeError(f"behaviors must be None or a list of behaviour labels, got {shown_value(behaviors)}")
    wanted = tuple(behaviors)
    if not wanted:
        raise ValueError("divergence: behaviors is empty: give behaviour labels, or None for every target behaviour")
    present = sorted({sp.behavior for e in encoded for sp in e.spans})
    unknown = [b for b in wanted if b not in present and b not in BEHAVIORS]
    bad = unknown or (list(wanted) if not any(b in present for b in wanted) else [])
    if bad:
        close = [m for b in bad for m in difflib.get_close_matches(b, sorted({*present, *BEHAVIORS}), n=1)]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        what = "are not behaviours of" if unknown else "have no span in"
        raise ValueError(
            f"divergence: behaviors {bad} {what} the {len(encoded)} traces (their behaviours: "
            f"{', '.join(present) or 'none'}){hint}: a span NLL would be measured over no token; give "
            "behaviours the traces hold, or leave behaviors out (every target behaviour they hold)"
        )
    return wanted


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
    for e in _encoded_list(encoded):
        check_ids_fit(ref, e.input_ids, f"divergence: trace {e.trace_id}")
    if _same_weights(ref, model):
        warnings.warn(
            f"{SAME_MODEL}: the reference and the compared model are the same weights (did you mean "
            "q = copy.deepcopy(model) before compressing q?)",
            UserWarning,
            stacklevel=user_stacklevel(),  # the caller's line, past no_grad's and checked_arguments' wrappers
        )
    elif _equal_weights(ref, model):
        warnings.warn(
            f"{SAME_MODEL}: the compared model is another object but its weights all equal the reference's "
            "(an unchanged copy: apply_compression returns the compressed copy and leaves its argument as it "
            "is; write q, _ = apply_compression(model, ...))",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


@checked_arguments
@torch.no_grad()
def divergence(
    ref,
    model,
    encoded: Sequence[EncodedTrace],
    *,
    behaviors: Sequence[str] | None = None,
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
    twice, or two objects whose weights are all equal (an unchanged copy), warn (KL 0 by
    construction). Refused too, with ``TypeError`` / ``ValueError`` naming the argument: ``encoded``
    that is not a list of :class:`~lrm_interp.data.tokens.EncodedTrace` (a dataset, a tokenizer:
    encode them with ``encode_trace``), ``chunk`` < 1, and ``behaviors`` (default: every target
    behaviour, :data:`~lrm_interp.data.traces.TARGET_BEHAVIORS`) naming a label that is no behaviour
    of the traces (a typo), or only behaviours without a span in them (a span NLL over no token).
    """
    encoded = _encoded_list(encoded)
    chunk = check_int("chunk", chunk, min=1)
    behaviors = TARGET_BEHAVIORS if behaviors is None else _check_behaviors(behaviors, encoded)
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
