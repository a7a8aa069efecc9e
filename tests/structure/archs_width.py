"""Transformers whose residual stream channel pruning narrows: a ViT with a class token and
nn.RMSNorm, a language model on nn.TransformerEncoder (tied embedding), a hand-written
Llama-style decoder with RMSNorm modules, and nn.Transformer fed by embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from archs import Attention
from torch import nn


class ViTCls(nn.Module):
    """A ViT with a class token, torch's nn.RMSNorm and a head on the class token."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 5, dim) * 0.5)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(nn.ModuleDict({
                "n1": nn.RMSNorm(dim), "attn": Attention(dim, heads), "n2": nn.RMSNorm(dim, eps=1e-3),
                "fc1": nn.Linear(dim, 2 * dim), "fc2": nn.Linear(2 * dim, dim),
            }))
        self.norm, self.head = nn.RMSNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for blk in self.blocks:
            x = x + blk["attn"](blk["n1"](x))
            x = x + blk["fc2"](F.gelu(blk["fc1"](blk["n2"](x))))
        return self.head(self.norm(x)[:, 0])


class TorchTransformerLM(nn.Module):
    """nn.Embedding with a tied output layer, learned positions read by slicing,
    nn.TransformerEncoder layers (pre- or post-norm) and a final LayerNorm."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4, depth: int = 2, norm_first: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.5)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        x = self.emb(idx) + self.pos[:, : idx.shape[1]]
        return self.head(self.norm(self.enc(x)))


class RMSNormHand(nn.Module):
    """A hand-written RMSNorm, as Llama-family code writes it."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.variance_epsilon)).to(x.dtype)


class LlamaishLM(nn.Module):
    """Hand-written pre-norm decoder: RMSNorm modules, q/k/v/o, SwiGLU MLP, untied head."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleDict({
                "n1": RMSNormHand(dim), "attn": Attention(dim, heads), "n2": RMSNormHand(dim),
                "gate": nn.Linear(dim, 2 * dim, bias=False), "up": nn.Linear(dim, 2 * dim, bias=False),
                "down": nn.Linear(2 * dim, dim, bias=False),
            }))
        self.norm, self.head = RMSNormHand(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.emb(idx)
        for blk in self.layers:
            x = x + blk["attn"](blk["n1"](x))
            h = blk["n2"](x)
            x = x + blk["down"](F.silu(blk["gate"](h)) * blk["up"](h))
        return self.head(self.norm(x))


class Seq2SeqLM(nn.Module):
    """nn.Transformer (encoder and decoder layers, cross-attention) fed by embeddings."""

    def __init__(self, vocab: int = 40, dim: int = 32, heads: int = 4, norm_first: bool = False) -> None:
        super().__init__()
        self.src, self.tgt = nn.Embedding(vocab, dim), nn.Embedding(vocab, dim)
        self.t = nn.Transformer(dim, heads, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=48,
                                dropout=0.0, batch_first=True, norm_first=norm_first)
        self.head = nn.Linear(dim, vocab)

    def forward(self, src, tgt):
        return self.head(self.t(self.src(src), self.tgt(tgt)))


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial affine values in every LayerNorm / RMSNorm (hand-written ones too)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model
