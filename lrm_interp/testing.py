"""Tiny offline models and a byte-level tokenizer, for tests, examples and smoke runs.

Nothing here touches a model hub: models are built from configs with seeded random
weights, and the tokenizer is a byte-level BPE with no merges (256 byte symbols plus
three specials), wrapped in ``PreTrainedTokenizerFast`` so offsets mappings work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedTokenizerFast

if TYPE_CHECKING:
    from transformers import PreTrainedModel

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
TINY_ARCHS: tuple[str, ...] = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gpt2")


def byte_tokenizer(extra_special: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """An offline byte-level tokenizer: every byte is one token, BOS prepended.

    ``len(tok) == 259 + len(extra_special)``; ids 0..255 are the byte symbols.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # Order the 256 byte symbols by byte value for readable ids.
    byte_to_sym = _bytes_to_unicode()
    vocab = {byte_to_sym[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    specials = [BOS, EOS, PAD, *extra_special]
    for i, s in enumerate(specials):
        vocab[s] = 256 + i
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, 256)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(extra_special) or None,
    )
    tok.padding_side = "right"
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tiny_config(
    arch: str,
    vocab_size: int = 259,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
):
    """A transformers config for a tiny model of family ``arch`` (one of ``TINY_ARCHS``)."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=1024,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "qwen3":
        return Qwen3Config(head_dim=hidden // heads, **common)
    if arch == "mistral":
        return MistralConfig(sliding_window=None, **common)
    if arch == "phi3":
        return Phi3Config(**common)
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=intermediate,
            n_positions=1024,
            bos_token_id=256,
            eos_token_id=257,
            pad_token_id=258,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from {TINY_ARCHS}")


def tiny_model(
    arch: str = "llama", *, seed: int = 0, dtype: torch.dtype = torch.float32, vocab_size: int = 259, **kw
) -> PreTrainedModel:
    """A seeded random causal LM of family ``arch`` in eval mode (attention: eager)."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(arch, vocab_size, **kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return model.to(dtype).eval()


class QuantLinearStub(torch.nn.Module):
    """A packed-int8 linear layer that is *not* an ``nn.Linear`` (for duck-typing tests).

    Stores ``qweight`` (int8 ``[out, in]``) and per-row ``scales`` buffers and dequantizes
    on the fly; ``in_features``/``out_features`` attributes as in most quantized layers.
    """

    qweight: torch.Tensor  # buffers (register_buffer)
    scales: torch.Tensor

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-8)
        self.register_buffer("qweight", torch.round(w / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qweight.to(x.dtype) * self.scales.to(x.dtype)
        y = x @ w.T
        return y if self.bias is None else y + self.bias


def quantize_stub_(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``nn.Linear`` inside the decoder layers by :class:`QuantLinearStub`."""
    from lrm_interp.model.sites import find_sites

    for s in find_sites(model):
        parent, leaf = s.name.rsplit(".", 1)
        mod = model.get_submodule(s.name)
        if isinstance(mod, torch.nn.Linear):
            setattr(model.get_submodule(parent), leaf, QuantLinearStub(mod))
    return model
