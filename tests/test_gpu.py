"""CUDA paths agree with the CPU ones (run on the lent GPU: `python -m pytest -m gpu -s`)."""

from __future__ import annotations

import copy
import time

import pytest
import torch

import lrm_interp
from lrm_interp.compress.quant import rtn_quantize
from lrm_interp.compress.quant.gptq import gptq_quantize
from lrm_interp.model.capture import Capture, MaskedSum
from lrm_interp.testing import tiny_model
from lrm_interp.toy import load_toy_model
from lrm_interp.toy.tasks import generate_dataset

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def test_capture_cuda_matches_cpu():
    m = tiny_model("llama")
    ids = torch.randint(0, 256, (2, 16))
    w = torch.rand(3, 2, 16)
    a, b = MaskedSum("output", w), MaskedSum("output", w)
    with Capture(m, None, [a]):
        m(ids)
    mc = copy.deepcopy(m).cuda()
    with Capture(mc, None, [b]):
        mc(ids.cuda())
    for k in a.sums:
        assert b.sums[k].device.type == "cuda" and b.sums[k].dtype == torch.float32
        torch.testing.assert_close(b.sums[k].cpu(), a.sums[k], rtol=1e-4, atol=1e-4)


def test_attribute_cuda_matches_cpu_and_bf16_close():
    model, tok = load_toy_model()
    ds = generate_dataset(2, seed=5)
    t = time.time()
    cpu = lrm_interp.attribute(model, ds, tokenizer=tok, progress=False)
    t_cpu = time.time() - t
    gm = copy.deepcopy(model).cuda()
    lrm_interp.attribute(gm, ds[:1], tokenizer=tok, progress=False)  # warm-up
    torch.cuda.synchronize()
    t = time.time()
    gpu = lrm_interp.attribute(gm, ds, tokenizer=tok, progress=False)
    torch.cuda.synchronize()
    t_gpu = time.time() - t
    torch.testing.assert_close(gpu.scores, cpu.scores, rtol=2e-3, atol=1e-6)
    bf = lrm_interp.attribute(gm, ds, tokenizer=tok, compute_dtype=torch.bfloat16, progress=False)
    from lrm_interp.attribution.stats import spearman

    rho = [spearman(bf.scores[i], cpu.scores[i]) for i in range(len(cpu.behaviors))]
    print(f"\nattribute toy (6 traces): cpu {t_cpu:.2f}s, cuda fp32 {t_gpu:.2f}s; bf16-vs-fp32 spearman {rho}")
    assert min(rho) > 0.9


def test_quantizers_cuda_match_cpu():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(256, 512, generator=g)
    X = torch.randn(2048, 512, generator=g)
    H = 2 * X.T @ X / X.shape[0]
    mask = torch.rand(256, 512, generator=g) < 0.02
    torch.testing.assert_close(
        rtn_quantize(W.cuda(), 3, group_size=128, mask=mask.cuda()).cpu(), rtn_quantize(W, 3, group_size=128, mask=mask)
    )
    gq_cpu = gptq_quantize(W, H, 3, group_size=128, mask=mask)
    gq_gpu = gptq_quantize(W.cuda(), H.cuda(), 3, group_size=128, mask=mask.cuda()).cpu()
    assert torch.equal(gq_gpu[mask], W[mask])

    # GPTQ's error feedback amplifies last-bit differences (GPU Cholesky/matmul) into different
    # rounding choices, so compare the layer-output error it minimises, not the codes.
    def err(Q):
        return float(torch.trace((W - Q) @ H @ (W - Q).T))

    e_cpu, e_gpu, e_rtn = err(gq_cpu), err(gq_gpu), err(rtn_quantize(W, 3, group_size=128, mask=mask))
    print(
        f"\nGPTQ output error cpu {e_cpu:.1f} gpu {e_gpu:.1f} (RTN {e_rtn:.1f}); codes differing "
        f"{float((gq_gpu != gq_cpu).float().mean()):.3f}"
    )
    assert abs(e_gpu - e_cpu) / e_cpu < 0.02 and e_gpu < 0.9 * e_rtn
