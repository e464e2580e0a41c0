"""The quantized-weight file (lrm_interp.quantized/1): round trip of RTN and GPTQ copies, dtypes, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from lrm_interp.compress.quant import quantize_model_
from lrm_interp.compress.quant.format import QUANTIZED_FORMAT, QuantizedTensor, load_quantized, save_quantized
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.model.weights import weight_matrix
from lrm_interp.protect.encoding import save_masks
from lrm_interp.protect.policies import global_top
from lrm_interp.protect.saliency import magnitude
from lrm_interp.testing import tiny_model


@pytest.mark.parametrize("method,dtype", [("rtn", torch.float32), ("gptq", torch.float32), ("rtn", torch.bfloat16)])
def test_quantized_copy_roundtrip(tmp_path, method, dtype):
    model = tiny_model("llama", seed=0).to(dtype)
    sites = find_sites(model)
    masks = global_top(magnitude(model, sites), 0.02)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    q = copy.deepcopy(model)
    rep = quantize_model_(
        q, bits=3, group_size=32, method=method, masks=masks, calib=ids, progress=False, keep_tensors=True
    )
    p = save_quantized(rep.tensors, tmp_path / "q.safetensors", metadata={"bits": 3})
    back, meta = load_quantized(p)
    assert meta == {"bits": 3} and set(back) == {s.name for s in sites}
    for s in sites:
        b = back[s.name]
        assert isinstance(b, QuantizedTensor) and b.dtype == dtype and b.bits == 3 and b.group_size == 32
        assert b.codes.dtype == torch.uint8 and int(b.codes.max()) <= 7
        assert torch.equal(b.dequantize(), weight_matrix(get_module(q, s.name)))  # the quantized model exactly
        m = masks[s.name]
        assert torch.equal(b.protected, m.flat_indices())
        assert torch.equal(b.values, weight_matrix(get_module(model, s.name)).flatten()[m.flat_indices()])


def test_load_quantized_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_quantized(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_quantized(tmp_path / "bad.safetensors")
    p = save_masks({}, tmp_path / "masks.safetensors")
    with pytest.raises(ValueError, match="not an lrm_interp quantized file"):
        load_quantized(p)
    assert QUANTIZED_FORMAT == "lrm_interp.quantized/1"
