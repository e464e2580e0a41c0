"""A trainable annotator: multinomial logistic regression over sentence features.

Fit it on any annotated set a user has (their own GPT-4o files in the paper layout, a hand
check, ...) and it labels the sentences of new traces the same way. Features of a sentence
(hashed into ``dim`` buckets with CRC32, so they are the same in every process):

- lower-cased word unigrams and bigrams, the first word and the first two words (the opener);
- shape: digits, math, ``=``, a question mark, length bucket, first sentence of the trace /
  of its paragraph, paragraph index (capped);
- the rule annotator's label and rule name (:class:`~lrm_interp.data.annotators.r1.R1RuleAnnotator`)
  for the sentence and its neighbours, and the previous sentence's opener (context).

Training labels: each sentence takes the gold label that covers most of its characters
(sentences no gold span touches are left out). :func:`cross_validate` fits on k−1 folds of
traces and annotates the held-out fold, then scores every trace with
:func:`~lrm_interp.data.annotators.agreement.annotation_agreement`. The model is one
``[dim, labels]`` matrix and a bias, saved as safetensors (format ``lrm_interp.annotator/1``);
torch only, no pickle.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lrm_interp._io import read_safetensors, refuse_result_file, write_safetensors
from lrm_interp.checks import check_float, check_int, check_seed, checked_arguments
from lrm_interp.data.annotators.agreement import annotation_agreement
from lrm_interp.data.annotators.base import annotate_response, thinking_part
from lrm_interp.data.annotators.r1 import R1RuleAnnotator
from lrm_interp.data.annotators.segment import Sentence
from lrm_interp.data.traces import BEHAVIORS, ReasoningDataset, ReasoningTrace

FORMAT = "lrm_interp.annotator/1"
FEATURES_VERSION = 1
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+|\\[a-z]+|[?!:=]")


def _bucket(n: int) -> str:
    return str(min(n, 3))


def sentence_features(sentences: Sequence[Sentence], rule_out: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Feature strings of each sentence (``rule_out``: the rule annotator's ``(label, rule)`` per sentence)."""
    toks = [_TOKEN.findall(s.text.lower()) for s in sentences]
    feats: list[list[str]] = []
    for k, s in enumerate(sentences):
        t = toks[k]
        f = [f"w:{w}" for w in t] + [f"b:{a}_{b}" for a, b in zip(t, t[1:])]
        f += [f"o1:{t[0] if t else ''}", f"o2:{'_'.join(t[:2])}"]
        text = s.text
        f += ["digit"] * bool(re.search(r"\d", text)) + ["math"] * bool(re.search(r"\\\(|\\\[|\$", text))
        f += ["eq"] * ("=" in text) + ["question"] * text.rstrip().endswith("?")
        f += [f"len:{min(len(t) // 8, 5)}", f"para:{_bucket(s.paragraph)}"]
        f += ["first"] * (k == 0)
        f += ["para_first"] * (k == 0 or sentences[k - 1].paragraph != s.paragraph)
        lab, rule = rule_out[k]
        f += [f"r:{lab}", f"rule:{rule}"]
        if k > 0:
            f += [f"prev_r:{rule_out[k - 1][0]}", f"prev_o1:{toks[k - 1][0] if toks[k - 1] else ''}"]
        else:
            f += ["prev_r:<start>"]
        f += [f"next_r:{rule_out[k + 1][0]}" if k + 1 < len(sentences) else "next_r:<end>"]
        f.append("bias")
        feats.append(f)
    return feats


def hash_features(feats: list[str], dim: int) -> list[int]:
    """The feature strings' ids in ``[0, dim)`` (CRC32: the same in every process)."""
    return [zlib.crc32(x.encode("utf-8")) % dim for x in feats]


def sentence_gold(trace: ReasoningTrace, s: Sentence, labels: Sequence[str]) -> int | None:
    """Index in ``labels`` of the gold label covering most characters of ``s`` (``None``: none)."""
    best, best_n = None, 0
    for sp in trace.spans:
        if sp.behavior not in labels:
            continue
        n = min(sp.end, s.end) - max(sp.start, s.start)
        if n > best_n:
            best, best_n = sp.behavior, n
    return labels.index(best) if best is not None else None


def fit_softmax_regression(
    flat: torch.Tensor,
    offsets: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    steps: int,
    lr: float,
    l2: float,
    class_weight: torch.Tensor | None = None,
) -> float:
    """Full-batch Adam on ``CE(embedding_bag(flat, W, offsets) + b, y) + l2·‖W‖²``, in place.

    ``flat``/``offsets``: the hashed feature ids of each row (``embedding_bag`` layout);
    ``weight``: ``[dim, labels]``; ``bias``: ``[labels]``; ``class_weight``: ``[labels]`` weights of
    the cross-entropy terms (weighted mean), ``None`` for the plain mean. Returns the final objective.
    (Adam written out: torch.optim's first import costs seconds through torch._dynamo.)
    """
    params = [weight.requires_grad_(True), bias.requires_grad_(True)]
    m1 = [torch.zeros_like(q) for q in params]
    m2 = [torch.zeros_like(q) for q in params]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny ops: extra threads only add contention (8x slower on 2 cores)
    try:
        return _adam_steps(flat, offsets, y, weight, bias, params, m1, m2, steps, lr, l2, class_weight)
    finally:
        torch.set_num_threads(threads)


def _adam_steps(
    flat,
    offsets,
    y,
    weight,
    bias,
    params,
    m1,
    m2,
    steps: int,
    lr: float,
    l2: float,
    class_weight: torch.Tensor | None = None,
) -> float:
    """The Adam loop of :func:`fit_softmax_regression` (objective of the last step)."""
    b1, b2 = 0.9, 0.999
    loss = float("nan")
    with torch.enable_grad():
        for step in range(1, steps + 1):
            logits = torch.nn.functional.embedding_bag(flat, weight, offsets, mode="sum") + bias
            obj = torch.nn.functional.cross_entropy(logits, y, weight=class_weight) + l2 * weight.pow(2).sum()
            grads = torch.autograd.grad(obj, params)
            loss = float(obj.detach())
            with torch.no_grad():
                for q, g, a1, a2 in zip(params, grads, m1, m2):
                    a1.mul_(b1).add_(g, alpha=1 - b1)
                    a2.mul_(b2).addcmul_(g, g, value=1 - b2)
                    q.addcdiv_(a1 / (1 - b1**step), (a2 / (1 - b2**step)).sqrt_().add_(1e-8), value=-lr)
    return loss


def check_fit_settings(
    *,
    dim: int = 1 << 14,
    l2: float = 1e-2,
    steps: int = 200,
    lr: float = 0.05,
    labels: Sequence[str] = BEHAVIORS,
    seed: int = 0,
    class_balance: float = 0.5,
) -> tuple[str, ...]:
    """The settings of :meth:`LinearAnnotator.fit`, checked: ``steps``/``dim`` integers >= 1, ``lr``
    a finite number > 0, ``l2``/``class_balance`` finite and >= 0, ``seed`` >= 0, ``labels`` at least
    two distinct strings. Returns ``labels`` as a tuple; ``ValueError`` naming the setting otherwise."""
    check_int("steps", steps, min=1)
    check_int("dim", dim, min=1)
    check_float("lr", lr, min=0.0, min_open=True)
    check_float("l2", l2, min=0.0)
    check_float("class_balance", class_balance, min=0.0)
    check_seed("seed", seed)
    if isinstance(labels, str) or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"labels must be a sequence of label names, got {labels!r}")
    labels = tuple(labels)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be at least two distinct names, got {list(labels)}")
    return labels


def fit_rows(
    rows: Sequence[Sequence[int]],
    ys: Sequence[int],
    n_labels: int,
    *,
    dim: int = 1 << 14,
    l2: float = 1e-2,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
    class_balance: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(weight [dim, n_labels], bias [n_labels], final objective)`` of the class-balanced softmax
    regression :meth:`LinearAnnotator.fit` runs, on hashed feature rows (:func:`hash_features`)
    and label indices ``ys`` (settings: :meth:`LinearAnnotator.fit`)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(dim, n_labels, generator=g) * 1e-3
    bias = torch.zeros(n_labels)
    flat = torch.tensor([i for r in rows for i in r], dtype=torch.long)
    offsets = torch.tensor([0] + [len(r) for r in rows[:-1]], dtype=torch.long).cumsum(0)
    y = torch.tensor(list(ys), dtype=torch.long)
    n_per = torch.bincount(y, minlength=n_labels).float()
    cw = n_per.clamp(min=1).pow(-class_balance) if class_balance else None
    loss = fit_softmax_regression(flat, offsets, y, weight, bias, steps=steps, lr=lr, l2=l2, class_weight=cw)
    if not (bool(torch.isfinite(weight).all()) and bool(torch.isfinite(bias).all()) and math.isfinite(loss)):
        # --l2 1e39 (beyond float32) gave an annotator of NaN weights that labelled every sentence
        # 'initializing' (H28-L2NAN): refused, nothing is saved
        raise ValueError(
            f"the fit diverged (weights that are not finite numbers) with l2 {l2!r} and lr {lr!r}: use a smaller "
            "l2 (--l2) or lr"
        )
    return weight.detach(), bias.detach(), loss


@dataclass
class LinearAnnotator:
    """A fitted sentence classifier; ``annotate`` emits one segment per sentence.

    ``weight``: ``[dim, len(labels)]``; ``bias``: ``[len(labels)]``; ``info``: what it was
    fitted on (traces, sentences, settings, cross-validated agreement when computed).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    labels: tuple[str, ...] = BEHAVIORS
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    # ------------------------------------------------------------------ prediction
    def _rows(self, thinking_text: str) -> tuple[list[Sentence], list[list[int]]]:
        explained = R1RuleAnnotator().explain(thinking_text)
        sents = [s for s, _, _ in explained]
        feats = sentence_features(sents, [(lab, why) for _, lab, why in explained])
        return sents, [hash_features(f, self.dim) for f in feats]

    @torch.no_grad()
    def _logits(self, rows: list[list[int]]) -> torch.Tensor:
        if not rows:
            return torch.zeros(0, len(self.labels))
        flat = torch.tensor([i for r in rows for i in r], dtype=torch.long)
        offsets = torch.tensor([0] + [len(r) for r in rows[:-1]], dtype=torch.long).cumsum(0)
        return torch.nn.functional.embedding_bag(flat, self.weight, offsets, mode="sum") + self.bias

    def label_sentences(self, thinking_text: str) -> list[tuple[Sentence, str]]:
        sents, rows = self._rows(thinking_text)
        pred = self._logits(rows).argmax(-1).tolist()
        return [(s, self.labels[p]) for s, p in zip(sents, pred)]

    def annotate(self, thinking_text: str) -> str:
        """The paper's markup, one segment per sentence."""
        return " ".join(f'["{lab}"]{s.text}["end-section"]' for s, lab in self.label_sentences(thinking_text))

    def describe(self) -> dict:
        return {
            "name": "linear",
            "dim": self.dim,
            "labels": list(self.labels),
            **{k: v for k, v in self.info.items() if k != "cross_validation"},
        }

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.blake2b(digest_size=12)
        h.update(self.weight.numpy().tobytes())
        h.update(self.bias.numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        dataset: ReasoningDataset | Sequence[ReasoningTrace],
        *,
        dim: int = 1 << 14,
        l2: float = 1e-2,
        steps: int = 200,
        lr: float = 0.05,
        labels: Sequence[str] = BEHAVIORS,
        seed: int = 0,
        class_balance: float = 0.5,
    ) -> LinearAnnotator:
        """Fit on annotated traces: full-batch Adam on the cross-entropy + ``l2``·‖W‖².

        ``class_balance``: each label's cross-entropy terms weigh ``(its sentence count)^-class_balance``
        (0: the plain mean; 1: every label counts as much as any other; real labels are dominated
        by deduction, so a rare behaviour's F1 gains from a value in between).

        Every setting is checked first (:func:`check_fit_settings`): ``steps=0`` would save the
        random initialisation as if it were a fitted annotator."""
        labels = check_fit_settings(
            dim=dim, l2=l2, steps=steps, lr=lr, labels=labels, seed=seed, class_balance=class_balance
        )
        rows, ys = [], []
        n_traces = 0
        for t in dataset:
            if not t.spans:
                continue
            n_traces += 1
            explained = R1RuleAnnotator().explain(thinking_part(t.response))
            sents = [s for s, _, _ in explained]
            feats = sentence_features(sents, [(lab, why) for _, lab, why in explained])
            for s, f in zip(sents, feats):
                y = sentence_gold(t, s, labels)
                if y is not None:
                    rows.append(hash_features(f, dim))
                    ys.append(y)
        if not rows:
            raise ValueError("no annotated sentence to fit on (no trace has spans with the given labels)")
        weight, bias, loss = fit_rows(
            rows, ys, len(labels), dim=dim, l2=l2, steps=steps, lr=lr, seed=seed, class_balance=class_balance
        )
        counts = {lab: ys.count(i) for i, lab in enumerate(labels)}
        info = {
            "traces": n_traces,
            "sentences": len(ys),
            "sentences_per_label": counts,
            "l2": l2,
            "steps": steps,
            "class_balance": class_balance,
            "features_version": FEATURES_VERSION,
            "final_loss": round(loss, 6),
        }
        return cls(weight, bias, tuple(labels), info)

    # ------------------------------------------------------------------ files
    @checked_arguments
    def save(self, path: str | os.PathLike, *, own: str | None = None) -> Path:
        """One safetensors file (format ``lrm_interp.annotator/1``), written atomically. A ``path``
        that is one of the files of a finished result of an ``lrm-interp`` command
        (``A/attribution.safetensors``, ``TM/model.safetensors`` of a ``toy train`` model), or lies
        inside one, is refused first (:class:`~lrm_interp._io.OtherResultError` naming it, H9-PYW);
        ``own``: the kind of result whose own file this is (a library writer's own result folder)."""
        refuse_result_file(path, own=own)
        meta = {
            "format": FORMAT,
            "kind": "linear",
            "labels": json.dumps(list(self.labels)),
            "features_version": str(FEATURES_VERSION),
            "info": json.dumps(self.info),
        }
        return write_safetensors(path, {"weight": self.weight, "bias": self.bias}, meta)

    @classmethod
    @checked_arguments
    def load(cls, path: str | os.PathLike) -> LinearAnnotator:
        tensors, meta = read_safetensors(path, (FORMAT,), "trained annotator file")
        if int(meta.get("features_version", -1)) != FEATURES_VERSION:
            raise ValueError(
                f"{path}: features version {meta.get('features_version')} is not "
                f"{FEATURES_VERSION}; refit it with 'lrm-interp annotate train'"
            )
        return cls(tensors["weight"], tensors["bias"], tuple(json.loads(meta["labels"])), json.loads(meta["info"]))


@checked_arguments
def cross_validate(
    dataset: ReasoningDataset | Sequence[ReasoningTrace],
    *,
    folds: int = 5,
    seed: int = 0,
    min_iou: float = 0.5,
    region: str = "all",
    progress: bool = False,
    **fit_kw,
) -> dict:
    """k-fold (grouped by trace) agreement of :class:`LinearAnnotator` with the dataset's own spans.

    Returns ``{"folds", "traces", "seed", "region", "agreement": annotation_agreement(...),
    "by_dataset": {dataset: annotation_agreement(...)}, "predicted": ReasoningDataset}``; every
    trace is annotated by the model that did not see it (``region``: see
    :func:`~lrm_interp.data.annotators.agreement.annotation_agreement`; ``by_dataset`` groups by
    the traces' ``metadata["dataset"]``).
    """
    from tqdm.auto import tqdm

    check_int("folds", folds, min=2)
    check_seed("seed", seed)
    check_float("min_iou", min_iou, min=0.0, max=1.0, min_open=True)
    unknown = sorted(set(fit_kw) - {"dim", "l2", "steps", "lr", "labels", "class_balance"})
    if unknown:
        raise TypeError(f"cross_validate: unknown fit settings {unknown}")
    check_fit_settings(**fit_kw)  # before any fold is fitted
    traces = [t for t in dataset if t.spans]
    if folds < 2 or len(traces) < folds:
        raise ValueError(
            f"cross-validation needs folds >= 2 and at least that many annotated traces "
            f"(folds={folds}, traces={len(traces)})"
        )
    order = list(range(len(traces)))
    random.Random(seed).shuffle(order)
    pred: dict[str, ReasoningTrace] = {}
    for k in tqdm(range(folds), desc="cross-validation folds", disable=not progress):
        test = [traces[i] for n, i in enumerate(order) if n % folds == k]
        train = [traces[i] for n, i in enumerate(order) if n % folds != k]
        model = LinearAnnotator.fit(train, **fit_kw)
        for t in test:
            pred[t.id] = t.with_spans(annotate_response(t.response, model, source=t.id)[0])
    gold = ReasoningDataset(traces)
    predicted = ReasoningDataset([pred[t.id] for t in traces])
    agreement = annotation_agreement(gold, predicted, min_iou=min_iou, region=region)
    return {
        "folds": folds,
        "traces": len(traces),
        "seed": seed,
        "region": region,
        "agreement": agreement,
        "by_dataset": agreement_by_dataset(gold, predicted, min_iou=min_iou, region=region),
        "predicted": predicted,
    }


def agreement_by_dataset(
    gold: ReasoningDataset, predicted: ReasoningDataset, *, min_iou: float = 0.5, region: str = "all"
) -> dict[str, dict]:
    """:func:`annotation_agreement` per ``metadata["dataset"]`` of the gold traces (sorted)."""
    names = sorted({str(t.metadata.get("dataset", "")) for t in gold})
    by_id = {t.id: t for t in predicted}
    out = {}
    for name in names:
        g = [t for t in gold if str(t.metadata.get("dataset", "")) == name]
        out[name] = annotation_agreement(
            ReasoningDataset(g), ReasoningDataset([by_id[t.id] for t in g]), min_iou=min_iou, region=region
        )
    return out


__all__ = [
    "LinearAnnotator",
    "check_fit_settings",
    "cross_validate",
    "agreement_by_dataset",
    "sentence_gold",
    "sentence_features",
    "hash_features",
    "fit_rows",
    "fit_softmax_regression",
    "FORMAT",
]
