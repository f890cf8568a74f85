"""Small Flax NNX models used by the tests, the experiments and the command line examples.

    ResNet(channels=8, classes=10, rngs=...)   # NHWC images (B, 28, 28, 1)
    TinyLM(vocab, d=32, heads=4, seq=..., mlp="relu" | "gelu", layers=1, rngs=...)   # tokens (B, T)

``ResNet``: stem conv -> BatchNorm -> ReLU, two residual blocks
``relu(x + bn2(conv2(relu(bn1(conv1(x))))))``, global average pool, Linear head.
``TinyLM``: an OPT-style decoder (token + position embeddings, pre-LayerNorm blocks with
``nnx.MultiHeadAttention`` (causal) and an MLP, final LayerNorm, Linear head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["ResNet", "TinyLM", "resnet_factory", "lm_factory"]


class Block(nnx.Module):
    def __init__(self, c: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(c, c, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(c, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(c, c, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(c, momentum=0.9, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn1(self.conv1(x)))
        return nnx.relu(x + self.bn2(self.conv2(h)))


class ResNet(nnx.Module):
    def __init__(self, channels: int = 8, classes: int = 10, *, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, channels, (3, 3), strides=(2, 2), rngs=rngs)
        self.bn = nnx.BatchNorm(channels, momentum=0.9, rngs=rngs)
        self.block1 = Block(channels, rngs)
        self.block2 = Block(channels, rngs)
        self.head = nnx.Linear(channels, classes, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn(self.stem(x)))
        h = self.block2(self.block1(h))
        return self.head(jnp.mean(h, axis=(1, 2)))


class DecoderBlock(nnx.Module):
    """Pre-LayerNorm decoder block: h + attn(ln1(h)) (causal), then h + fc2(act(fc1(ln2(h))))."""

    def __init__(self, d: int, heads: int, mlp: str, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.fc1 = nnx.Linear(d, 4 * d, rngs=rngs)
        self.fc2 = nnx.Linear(4 * d, d, rngs=rngs)
        self.mlp = mlp

    def __call__(self, h, mask):
        h = h + self.attn(self.ln1(h), mask=mask)
        act = jax.nn.gelu if self.mlp == "gelu" else nnx.relu
        return h + self.fc2(act(self.fc1(self.ln2(h))))


class TinyLM(nnx.Module):
    """An OPT-style decoder: token + learned position embeddings, ``layers`` pre-LayerNorm
    blocks (``DecoderBlock``: causal ``nnx.MultiHeadAttention`` and a 4d MLP with ReLU or
    GELU), final LayerNorm, Linear head.  Tokens (B, T) -> logits (B, T, vocab), T <= seq."""

    def __init__(
        self, vocab: int, d: int = 32, heads: int = 4, seq: int = 32, mlp: str = "relu", layers: int = 1, *, rngs
    ):
        if mlp not in ("relu", "gelu"):
            raise ValueError(f"mlp must be 'relu' or 'gelu', got {mlp!r}")
        self.tok = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Embed(seq, d, rngs=rngs)
        self.blocks = nnx.List([DecoderBlock(d, heads, mlp, rngs) for _ in range(layers)])
        self.lnf = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, t):
        T = t.shape[1]
        h = self.tok(t) + self.pos(jnp.arange(T))[None]
        mask = nnx.make_causal_mask(t)
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.lnf(h))


def resnet_factory():
    """The command line's example factory: ``--model nettrim_jax.models:resnet_factory``."""
    return ResNet(8, 10, rngs=nnx.Rngs(0))


def lm_factory():
    """``--model nettrim_jax.models:lm_factory``: a TinyLM over bytes (vocab 256, seq 32)."""
    return TinyLM(256, 32, 4, 32, rngs=nnx.Rngs(0))
