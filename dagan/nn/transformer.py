"""The attention layers of the CA2SIS generator (Fontanini et al. 2024, "cross-attention generator").

Image features attend to the per-class style codes: queries come from every position of the
feature map, keys and values from the class tokens (one per label channel), so each position
learns which class's style to take (the attention maps that L_att aligns with the label map).
The first layers also let positions attend to each other (self-attention).

One layer (:class:`SpatialCrossAttention`) follows the layout of the official code, which is
the latent-diffusion "spatial transformer": group norm, a 1x1 conv to the token width
(heads x head width), one pre-norm transformer block (self-attention when enabled,
cross-attention, a GELU-gated feed-forward of 4x width, each with a residual), a
zero-initialised 1x1 conv back to the feature width and a residual around the layer.
Self-attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` (memory
efficient kernels); cross-attention over the few class tokens is written out, because its
logits are returned for the attention loss and the figures.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

PREFERRED_GROUPS = 32  # group norm groups of the official layers (their widths are multiples of 32)


def group_count(channels: int, preferred: int = PREFERRED_GROUPS) -> int:
    """Groups for a group norm over ``channels``: 32 when they divide, else the largest common divisor."""
    return math.gcd(preferred, channels)


class FloatGroupNorm(nn.GroupNorm):
    """Group norm computed in float32 and returned in the input's dtype (as the official layers do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention of ``query_dim`` tokens over ``context_dim`` tokens (no biases on
    q, k, v; a biased output projection)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def _split(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, _ = tokens.shape
        return tokens.view(batch, count, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                return_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, query_dim), context (B, M, context_dim; x itself when None) -> (B, N, query_dim) and,
        with ``return_logits``, the head-averaged attention logits (B, N, M) before the softmax."""
        context = x if context is None else context
        query, key, value = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        logits = None
        if return_logits:
            scores = query @ key.transpose(-1, -2) * self.head_dim**-0.5
            attended = scores.softmax(dim=-1) @ value
            logits = scores.mean(dim=1)
        else:
            attended = F.scaled_dot_product_attention(query, key, value)
        batch, _, count, _ = attended.shape
        return self.to_out(attended.transpose(1, 2).reshape(batch, count, -1)), logits


class GatedFeedForward(nn.Module):
    """Linear to 2 x hidden, value * GELU(gate), linear back (GEGLU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.project = nn.Linear(dim, 2 * hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.project(x).chunk(2, dim=-1)
        return self.out(value * F.gelu(gate))


class TransformerBlock(nn.Module):
    """[x + SelfAttn(LN(x))], x + CrossAttn(LN(x), styles), x + FF(LN(x)); returns x and the
    cross-attention logits (B, N, M)."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int, self_attention: bool):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim) if self_attention else None
        self.self_attention = MultiHeadAttention(dim, dim, heads, head_dim) if self_attention else None
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attention = MultiHeadAttention(dim, context_dim, heads, head_dim)
        self.norm_feed_forward = nn.LayerNorm(dim)
        self.feed_forward = GatedFeedForward(dim, 4 * dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.self_attention is not None and self.norm_self is not None:  # both or neither
            x = x + self.self_attention(self.norm_self(x))[0]
        update, logits = self.cross_attention(self.norm_cross(x), context, return_logits=True)
        x = x + update
        return x + self.feed_forward(self.norm_feed_forward(x)), logits


class SpatialCrossAttention(nn.Module):
    """A feature map (B, C, H, W) attends to class tokens (B, M, context_dim); returns the map and the
    head-averaged cross-attention logits as maps (B, M, H, W)."""

    def __init__(self, channels: int, context_dim: int, heads: int, head_dim: int, self_attention: bool):
        super().__init__()
        inner = heads * head_dim
        self.norm = FloatGroupNorm(group_count(channels), channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.block = TransformerBlock(inner, context_dim, heads, head_dim, self_attention)
        self.proj_out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)  # the layer starts as the identity
        nn.init.zeros_(cast(torch.Tensor, self.proj_out.bias))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, H*W, inner)
        tokens, logits = self.block(tokens, context)
        update = self.proj_out(tokens.transpose(1, 2).reshape(batch, -1, height, width))
        return x + update, logits.transpose(1, 2).reshape(batch, -1, height, width)
