"""KL and behaviour-span NLL between two models against a per-position loop."""

from __future__ import annotations

import pytest
import torch

from lrm_interp.data.tokens import encode_trace
from lrm_interp.evaluation.divergence import divergence
from lrm_interp.testing import tiny_model
from lrm_interp.toy.tasks import generate_dataset

BEH = ("adding-knowledge", "deduction")


def naive(ref, model, encoded, behaviors):
    kl, n, nll, nll_r, m = 0.0, 0, 0.0, 0.0, 0
    for e in encoded:
        ids = e.input_ids
        with torch.no_grad():
            a = torch.log_softmax(ref(input_ids=ids[None]).logits[0].double(), -1)
            b = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), -1)
        for t in range(max(e.response_start - 1, 0), len(ids) - 1):
            kl += float((a[t].exp() * (a[t] - b[t])).sum())  # one position at a time, float64
            n += 1
        seen = set()
        for sp in e.spans:
            if sp.behavior in behaviors:
                for t in range(sp.start - 1, sp.end - 1):  # position t predicts token t + 1
                    if t not in seen:
                        seen.add(t)
                        nll -= float(b[t, ids[t + 1]])
                        nll_r -= float(a[t, ids[t + 1]])
                        m += 1
    return kl / n, nll / m, nll_r / m, n, m


@pytest.fixture(scope="module")
def pair(tokenizer):
    enc = [encode_trace(tokenizer, t) for t in generate_dataset(1, seed=11)]
    return tiny_model("llama", seed=0), tiny_model("llama", seed=1), enc


def test_divergence_matches_loop(pair):
    ref, model, enc = pair
    d = divergence(ref, model, enc[:2], behaviors=BEH, chunk=37)
    kl, nll, nll_r, n, m = naive(ref, model, enc[:2], BEH)
    assert (d.tokens, d.span_tokens) == (n, m) and m > 0
    assert d.kl == pytest.approx(kl, rel=1e-4) and d.kl > 0
    assert d.nll == pytest.approx(nll, rel=1e-5) and d.nll_ref == pytest.approx(nll_r, rel=1e-5)


def test_same_model_and_chunking(pair):
    ref, model, enc = pair
    with pytest.warns(UserWarning, match="divergence of a model with itself is 0 by construction"):  # H14-DVS
        same = divergence(ref, ref, enc, behaviors=BEH)
    assert same.kl == pytest.approx(0.0, abs=1e-6) and same.nll == same.nll_ref
    assert divergence(ref, model, enc, chunk=5).to_dict() == pytest.approx(
        divergence(ref, model, enc).to_dict(), rel=1e-5
    )
    with pytest.raises(ValueError, match="no response tokens"):
        divergence(ref, model, [])
