"""Networks as plain spec lists, and what the experiments do with them.

A network here is a list of ``nettrim_jax.Dense`` / ``nettrim_jax.Conv`` specs and plain
callables (pooling), the form ``nettrim_jax.prune`` accepts and returns.  This module turns
the trained NNX models of ``nettrim_jax.training`` into that form, evaluates it, prunes it
with the layer-wise baselines of ``nettrim_jax.baselines`` at given per-layer counts, and
fine-tunes it with its pruned weights held at zero (``nettrim_jax.masked``).

Nonzero counts are of *weights* (kernels), biases excluded, as in the paper's tables.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nettrim_jax
from nettrim_jax import baselines
from nettrim_jax.io import convert
from nettrim_jax.network.adapters import adapt
from nettrim_jax.network.specs import Conv, Dense, apply_specs

# ----------------------------------------------------------------------------- conversion


def spec_network(model, x) -> list:
    """A trained chain model (``training.MLP`` / ``CNN``, or any NNX/Linen chain) as a spec
    network, read from its forward pass on a few inputs ``x`` (``io.convert``)."""
    layers, _ = convert.from_model(model, jnp.asarray(x[:8]))
    return convert.to_network(layers)


def layers_of(net) -> list[int]:
    """Indices of the prunable layers (specs) in ``net``."""
    return [i for i, item in enumerate(net) if isinstance(item, (Dense, Conv))]


def nnz(net) -> list[int]:
    """Nonzero weights per prunable layer (kernels only)."""
    return [int(jnp.sum(net[i].kernel != 0)) for i in layers_of(net)]


def sizes(net) -> list[int]:
    return [int(net[i].kernel.size) for i in layers_of(net)]


def kernel_counts(model, x) -> list[int]:
    """Nonzero kernel weights (biases excluded) of every prunable layer of any model
    ``prune`` takes (NNX, Linen, specs), in call order: the per-layer counts to hand the
    baselines (``baselines.prune_model``)."""
    return [int(np.count_nonzero(np.asarray(s.kernel))) for s in adapt(model, jnp.asarray(x)).specs]


def kernel_sizes(model, x) -> list[int]:
    """Kernel sizes of every prunable layer of any model ``prune`` takes, in call order."""
    return [int(np.size(s.kernel)) for s in adapt(model, jnp.asarray(x)).specs]


# ----------------------------------------------------------------------------- evaluation


def _split(net):
    """(hashable skeleton with the arrays removed, list of (kernel, bias))."""
    skeleton = tuple(item._replace(kernel=None, bias=None) if isinstance(item, (Dense, Conv))
                     else item for item in net)
    params = [(item.kernel, item.bias) for item in net if isinstance(item, (Dense, Conv))]
    return skeleton, params


def _join(skeleton, params):
    it = iter(params)
    return [item._replace(kernel=k, bias=b) if isinstance(item, (Dense, Conv)) else item
            for item in skeleton for k, b in [next(it) if isinstance(item, (Dense, Conv))
                                               else (None, None)]]


@functools.partial(jax.jit, static_argnums=0)
def _forward(skeleton, params, x):
    return apply_specs(_join(skeleton, params), x)


def logits(net, x, batch_size: int = 2000) -> np.ndarray:
    """Model outputs on ``x``, in batches."""
    skeleton, params = _split(net)
    out = [np.asarray(_forward(skeleton, params, jnp.asarray(x[s:s + batch_size])))
           for s in range(0, len(x), batch_size)]
    return np.concatenate(out)


def accuracy(net, x, y) -> float:
    return float(np.mean(np.argmax(logits(net, x), -1) == np.asarray(y)))


def relative_discrepancy(net, pruned, x) -> float:
    """rd = ||Z - Z_hat||_F / ||Z||_F on the pre-softmax outputs."""
    z, zh = logits(net, x), logits(pruned, x)
    return float(np.linalg.norm(z - zh) / np.linalg.norm(z))


# ----------------------------------------------------------------------------- baselines


def prune_baseline(net, x, keeps, method: str, *, max_rows: int | None = 50_000, seed: int = 0):
    """Prune every layer of the spec network ``net`` to ``keeps[l]`` nonzero weights with a
    baseline (``nettrim_jax.baselines.prune_model``: Wanda, SparseGPT and ALPS
    sequentially on the pruned prefix's inputs; conv layers as at most ``max_rows`` patch
    rows; biases kept)."""
    model, _ = baselines.prune_model(list(net), jnp.asarray(x), list(keeps), method, max_rows=max_rows, seed=seed)
    return list(model)


# ----------------------------------------------------------------------------- fine-tuning


def finetune(net, x, y, *, steps: int = 300, batch_size: int = 128, learning_rate: float = 1e-3,
             seed: int = 0):
    """Masked fine-tuning: Adam on all kernels and biases, pruned (zero) kernel entries held
    at exactly zero with ``nettrim_jax.masked``.  Returns the new network."""
    idx = layers_of(net)
    params = [(net[i].kernel, net[i].bias) for i in idx]
    masks = [(net[i].kernel != 0, jnp.ones_like(net[i].bias, bool)) for i in idx]
    tx = nettrim_jax.masked(optax.adam(learning_rate), masks)
    state = tx.init(params)

    def build(params):
        out = list(net)
        for i, (k, b) in zip(idx, params):
            out[i] = net[i]._replace(kernel=k, bias=b)
        return out

    @jax.jit
    def step(params, state, xb, yb):
        def loss(p):
            z = apply_specs(build(p), xb)
            return optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()

        g = jax.grad(loss)(params)
        upd, state = tx.update(g, state, params)
        return optax.apply_updates(params, upd), state

    rng = np.random.default_rng(seed)
    x, y = np.asarray(x), np.asarray(y)
    for _ in range(steps):
        b = rng.choice(len(x), min(batch_size, len(x)), replace=False)
        params, state = step(params, state, jnp.asarray(x[b]), jnp.asarray(y[b]))
    return build(params)


def l1_penalty(strength: float) -> optax.GradientTransformation:
    """Adds ``strength * sign(W)`` to the gradient of every kernel (ndim >= 2): the
    subgradient of ``strength * sum |W|``; chain it before the optimizer."""

    def update(updates, state, params=None):
        return jax.tree.map(
            lambda g, p: g + strength * jnp.sign(p) if p.ndim >= 2 else g, updates, params), state

    return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def sparsity(net) -> float:
    """Fraction of zero weights over all prunable layers."""
    return 1.0 - sum(nnz(net)) / sum(sizes(net))


def train_nnx(model, x, y, *, steps, learning_rate=3e-3, l1=0.0, seed=0, batch_size=128):
    """Train an NNX classifier in place (cosine-decayed Adam, optional L1 on kernels)."""
    from nettrim_jax import training
    sched = optax.cosine_decay_schedule(learning_rate, max(1, steps))
    tx = optax.adam(sched) if l1 == 0 else optax.chain(l1_penalty(l1), optax.adam(sched))
    training.train_classifier(model, x, y, steps=steps, optimizer=tx, seed=seed,
                              batch_size=batch_size)
    return model


def prune_nettrim(net, x, *, scheme, epsilon=0.05, gamma=1.0, **options):
    """``nettrim_jax.prune`` on a spec network, quietly; returns (pruned net, report)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = nettrim_jax.prune(net, jnp.asarray(x), scheme=scheme, epsilon=epsilon, gamma=gamma,
                                progress=False, **options)
    return list(res.model), res.report
