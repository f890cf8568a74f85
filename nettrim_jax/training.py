"""Small shared training helpers: tiny NNX / Linen classifiers and an optax training loop.

Used by the tests, the experiments and the CLI demo.  Everything is small on purpose (the
models train in seconds on a CPU).

API::

    MLP(sizes, *, rngs, dropout=0.0)             # nnx: Linear -> relu -> ... -> Linear (logits)
    CNN(in_channels=1, channels=(4, 8), hidden=32, num_classes=10, image_size=8, *, rngs,
        kernel_size=3, dropout=0.0)               # nnx: [Conv -> relu -> max_pool 2x2] x k -> MLP head
    make_mlp(sizes, seed=0, dropout=0.0) -> MLP
    make_cnn(..., seed=0) -> CNN
    LinenMLP(sizes), LinenCNN(channels, hidden, num_classes)   # the same networks in Linen
    train_classifier(model, x, y, *, steps=300, batch_size=128, learning_rate=3e-3,
                     optimizer=None, seed=0) -> TrainResult(model, losses)
    train_linen_classifier(module, variables, x, y, ...) -> TrainResult(variables, losses)
    accuracy(model_or_fn, x, y) -> float       # model is an nnx module or any x -> logits callable
    load_digits_split(test_fraction=0.25, seed=0, images=False) -> (x_tr, y_tr, x_te, y_te)

Layouts follow Flax: activations (samples, features), images NHWC, dense kernel (in, out),
conv kernel HWIO.  ``train_classifier`` trains the NNX model *in place* (NNX semantics) and
also returns it; pass ``optimizer=nettrim_jax.masked(optax.adam(...), result.masks)`` to
fine-tune a pruned model while keeping its pruned weights exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

__all__ = [
    "MLP",
    "CNN",
    "make_mlp",
    "make_cnn",
    "LinenMLP",
    "LinenCNN",
    "TrainResult",
    "train_classifier",
    "train_linen_classifier",
    "accuracy",
    "load_digits_split",
]


# ----------------------------------------------------------------------------- NNX models


class MLP(nnx.Module):
    """Fully connected ReLU network.

    Args:
      sizes: (in, hidden_1, ..., out) feature counts; ``len(sizes) - 1`` Linear layers.
      rngs: ``nnx.Rngs``.
      dropout: dropout rate applied after each hidden ReLU (0 disables; identity in eval
        mode).

    Input (B, in) or (B, ...) (flattened), output (B, out) logits.
    """

    def __init__(self, sizes: Sequence[int], *, rngs: nnx.Rngs, dropout: float = 0.0):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least (in, out), got {sizes}")
        self.sizes = sizes
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return self.layers[-1](x)


class CNN(nnx.Module):
    """LeNet-style network: ``[Conv -> relu -> max_pool 2x2] * len(channels)``, flatten,
    ``Linear(hidden) -> relu -> Linear(num_classes)``.

    Input (B, image_size, image_size, in_channels) NHWC (a (B, image_size**2) batch is
    reshaped for single-channel images); output (B, num_classes) logits.  Convs use SAME
    padding and stride 1.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (4, 8),
        hidden: int = 32,
        num_classes: int = 10,
        image_size: int = 8,
        *,
        rngs: nnx.Rngs,
        kernel_size: int = 3,
        dropout: float = 0.0,
    ):
        chans = (int(in_channels),) + tuple(int(c) for c in channels)
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, (kernel_size, kernel_size), padding="SAME", rngs=rngs)
                for a, b in zip(chans[:-1], chans[1:])
            ]
        )
        side = self.image_size
        for _ in channels:
            side = side // 2
        flat = side * side * chans[-1]
        if flat <= 0:
            raise ValueError(f"image_size {image_size} too small for {len(channels)} 2x2 poolings")
        self.fc1 = nnx.Linear(flat, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def __call__(self, x):
        if x.ndim == 2:
            x = x.reshape(x.shape[0], self.image_size, self.image_size, self.in_channels)
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc1(x))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc2(x)


def make_mlp(sizes: Sequence[int], seed: int = 0, dropout: float = 0.0) -> MLP:
    return MLP(sizes, rngs=nnx.Rngs(seed), dropout=dropout)


def make_cnn(
    in_channels: int = 1,
    channels: Sequence[int] = (4, 8),
    hidden: int = 32,
    num_classes: int = 10,
    image_size: int = 8,
    seed: int = 0,
    **kw,
) -> CNN:
    return CNN(in_channels, channels, hidden, num_classes, image_size, rngs=nnx.Rngs(seed), **kw)


# ----------------------------------------------------------------------------- Linen models


class LinenMLP(nn.Module):
    """Linen twin of ``MLP``: ``sizes`` are the output widths of the Dense layers
    (``Dense_0 ... Dense_{k-1}``); input is flattened."""

    sizes: Sequence[int]

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for i, s in enumerate(self.sizes):
            x = nn.Dense(s, name=f"Dense_{i}")(x)
            if i < len(self.sizes) - 1:
                x = nn.relu(x)
        return x


class LinenCNN(nn.Module):
    """Linen twin of ``CNN`` (NHWC input, or flat single-channel images of side
    ``image_size``)."""

    channels: Sequence[int] = (4, 8)
    hidden: int = 32
    num_classes: int = 10
    image_size: int = 8
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x):
        if x.ndim == 2:
            x = x.reshape(x.shape[0], self.image_size, self.image_size, 1)
        for i, c in enumerate(self.channels):
            x = nn.relu(nn.Conv(c, (self.kernel_size, self.kernel_size), padding="SAME", name=f"Conv_{i}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, name="Dense_0")(x))
        return nn.Dense(self.num_classes, name="Dense_1")(x)


# ----------------------------------------------------------------------------- training


class TrainResult(NamedTuple):
    """``model``: the trained NNX module (same object, trained in place) or the new Linen
    variables; ``losses``: (steps,) numpy array of mini-batch cross-entropy losses."""

    model: Any
    losses: np.ndarray


def _batches(n, batch_size, steps, seed):
    rng = np.random.default_rng(seed)
    bs = min(batch_size, n)
    idx = []
    perm = rng.permutation(n)
    pos = 0
    for _ in range(steps):
        if pos + bs > n:
            perm, pos = rng.permutation(n), 0
        idx.append(perm[pos : pos + bs])
        pos += bs
    return np.stack(idx)


def train_classifier(
    model: nnx.Module,
    x,
    y,
    *,
    steps: int = 300,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    optimizer: optax.GradientTransformation | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train an NNX classifier with softmax cross-entropy, in place.

    Args:
      model: NNX module mapping (B, ...) inputs to (B, classes) logits.
      x: (P, ...) inputs; y: (P,) integer labels.
      steps: number of mini-batch steps; batch_size: rows per step (sampled without
        replacement per epoch, fixed ``seed``).
      learning_rate: Adam step size when ``optimizer`` is None.
      optimizer: any optax transformation over the ``nnx.Param`` state (e.g.
        ``nettrim_jax.masked(optax.adam(1e-3), masks)``).

    Returns ``TrainResult(model, losses)``; the model is left in eval mode.
    """
    tx = optimizer if optimizer is not None else optax.adam(learning_rate)
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    model.train()
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, xb, yb):
        def loss_fn(m):
            logits = m(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = []
    for idx in _batches(x.shape[0], batch_size, steps, seed):
        losses.append(step(model, opt, x[idx], y[idx]))
    model.eval()
    return TrainResult(model, np.asarray(jnp.stack(losses)) if losses else np.zeros(0))


def train_linen_classifier(
    module: nn.Module,
    variables,
    x,
    y,
    *,
    seed: int = 0,
    steps: int = 300,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    optimizer: optax.GradientTransformation | None = None,
) -> TrainResult:
    """Linen counterpart of ``train_classifier``: returns new ``variables`` (``{"params": ...}``);
    the optimizer acts on ``variables["params"]``."""
    tx = optimizer if optimizer is not None else optax.adam(learning_rate)
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    state = tx.init(params)
    x = jnp.asarray(x)
    y = jnp.asarray(y)

    @jax.jit
    def step(params, state, xb, yb):
        def loss_fn(p):
            logits = module.apply({"params": p, **rest}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for idx in _batches(x.shape[0], batch_size, steps, seed):
        params, state, loss = step(params, state, x[idx], y[idx])
        losses.append(loss)
    return TrainResult({"params": params, **rest}, np.asarray(jnp.stack(losses)) if losses else np.zeros(0))


def accuracy(model: nnx.Module | Callable, x, y, batch_size: int = 4096) -> float:
    """Top-1 accuracy of ``model(x)`` logits against integer labels ``y`` (an NNX module is
    evaluated as a clone in eval mode, so dropout is off and the module itself is untouched)."""
    if isinstance(model, nnx.Module):
        model = nnx.clone(model)
        model.eval()
    x = np.asarray(x)
    y = np.asarray(y)
    correct = 0
    for s in range(0, x.shape[0], batch_size):
        logits = model(jnp.asarray(x[s : s + batch_size]))
        correct += int(np.sum(np.asarray(jnp.argmax(logits, -1)) == y[s : s + batch_size]))
    return correct / max(1, x.shape[0])


def load_digits_split(test_fraction: float = 0.25, seed: int = 0, images: bool = False):
    """scikit-learn's 8x8 digits scaled to [0, 1]: ``(x_train, y_train, x_test, y_test)``.

    ``x`` is (P, 64) float32, or (P, 8, 8, 1) NHWC with ``images=True``; ``y`` is (P,) int32.
    The split is a fixed random permutation (``seed``).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(y))
    x, y = x[perm], y[perm]
    if images:
        x = x.reshape(-1, 8, 8, 1)
    n_test = int(round(len(y) * test_fraction))
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]
