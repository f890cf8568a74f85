"""Models as Flax users bring them, written the way their libraries write them: a GPT-2-shaped
Linen decoder (learned positions, pre-LayerNorm, GELU MLP, a head tied to the token
embedding through ``Embed.attend``), a BERT-shaped NNX encoder (post-LayerNorm, an attention
mask passed as a call argument, a tanh pooler and a classifier), and an NNX ViT (a strided
Conv patch embedding, a class token).  Each is pruned with what a user types,
``prune(model, x, sparsity=0.5, ...)``: every projection is found and pruned, every solve is
certified, the model keeps its outputs, and whatever holds weights but is not pruned is
named in ``report.left_dense``.  ``transformers``' own Flax BERT and GPT-2 run where it is
installed with its Flax classes (v4; skipped cleanly otherwise)."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import nettrim_jax as nt

D, HEADS, VOCAB, SEQ = 32, 4, 50, 16


def _rel(a, b):
    return float(jnp.linalg.norm(jnp.asarray(a) - b) / jnp.linalg.norm(b))


def _prune(model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a missed count by a fraction of a point
        return nt.prune(model, x, sparsity=0.5, progress=False, **kw)


def _check(res, names, sparsity=0.5):
    got = [layer.name for layer in res.report.layers]
    assert got == names, got
    assert all(layer.converged for layer in res.report.layers), [l.name for l in res.report.layers if not l.converged]
    assert all(layer.nnz_after >= 0.1 * layer.nnz_before for layer in res.report.layers)  # no layer dead
    reached = 1 - res.report.nnz_after / res.report.nnz_before
    assert abs(reached - sparsity) < 0.05, reached


class GPT2Block(nn.Module):
    @nn.compact
    def __call__(self, h):
        a = nn.LayerNorm(name="ln_1")(h)
        qkv = nn.Dense(3 * D, name="c_attn")(a)
        q, k, v = (t.reshape(*t.shape[:2], HEADS, D // HEADS) for t in jnp.split(qkv, 3, axis=-1))
        mask = nn.make_causal_mask(jnp.ones(h.shape[:2]))
        o = nn.dot_product_attention(q, k, v, mask=mask).reshape(h.shape)
        h = h + nn.Dense(D, name="c_proj")(o)
        m = nn.gelu(nn.Dense(4 * D, name="c_fc")(nn.LayerNorm(name="ln_2")(h)))
        return h + nn.Dense(D, name="mlp_proj")(m)


class GPT2(nn.Module):
    @nn.compact
    def __call__(self, ids):
        wte = nn.Embed(VOCAB, D, name="wte")
        pos = nn.Embed(SEQ, D, name="wpe")(jnp.arange(ids.shape[1]))
        h = wte(ids) + pos
        for i in range(2):
            h = GPT2Block(name=f"h_{i}")(h)
        return wte.attend(nn.LayerNorm(name="ln_f")(h))  # tied head: no kernel of its own


def test_gpt2_shaped_linen_decoder():
    ids = jax.random.randint(jax.random.key(0), (24, SEQ), 0, VOCAB)
    m = GPT2()
    v = m.init(jax.random.key(1), ids)
    res = _prune((m, v), ids, refit=True)
    names = [f"h_{i}/{n}" for i in range(2) for n in ("c_attn", "c_proj", "c_fc", "mlp_proj")]
    _check(res, names)
    assert res.report.left_dense == {}  # the tied head is an embedding, not a kernel
    assert _rel(m.apply(res.model, ids), m.apply(v, ids)) < 0.5  # 50% of every projection


class BertLayer(nnx.Module):
    def __init__(self, rngs):
        self.attention = nnx.MultiHeadAttention(HEADS, D, decode=False, rngs=rngs)
        self.ln1, self.ln2 = nnx.LayerNorm(D, rngs=rngs), nnx.LayerNorm(D, rngs=rngs)
        self.intermediate = nnx.Linear(D, 4 * D, rngs=rngs)
        self.output = nnx.Linear(4 * D, D, rngs=rngs)

    def __call__(self, h, mask):
        h = self.ln1(h + self.attention(h, mask=mask))
        return self.ln2(h + self.output(nnx.gelu(self.intermediate(h))))


class Bert(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.layers = nnx.List([BertLayer(rngs) for _ in range(2)])
        self.pooler = nnx.Linear(D, D, rngs=rngs)
        self.classifier = nnx.Linear(D, 3, rngs=rngs)

    def __call__(self, ids, attention_mask):
        mask = nnx.make_attention_mask(attention_mask, attention_mask)
        h = self.embed(ids)
        for layer in self.layers:
            h = layer(h, mask)
        return self.classifier(jnp.tanh(self.pooler(h[:, 0])))


def test_bert_shaped_nnx_encoder_with_an_attention_mask():
    ids = jax.random.randint(jax.random.key(0), (64, SEQ), 0, VOCAB)
    lengths = jax.random.randint(jax.random.key(2), (64,), SEQ // 2, SEQ + 1)
    attention_mask = (jnp.arange(SEQ)[None] < lengths[:, None]).astype(jnp.int32)
    model = Bert(nnx.Rngs(0))
    res = _prune(model, ids, refit=True, model_kwargs={"attention_mask": attention_mask})
    names = [
        f"layers/{i}/{n}"
        for i in range(2)
        for n in ("attention/query", "attention/key", "attention/value", "attention/out", "intermediate", "output")
    ]
    _check(res, [*names, "pooler", "classifier"])
    # the cascade's budget rule gives key and value (whose inputs are unchanged) a real budget
    for layer in res.report.layers:
        if layer.name.endswith(("key", "value")):
            assert layer.nnz_after < 0.8 * layer.nnz_before, (layer.name, layer.nnz_after, layer.nnz_before)
    ref = model(ids, attention_mask)
    assert _rel(res.model(ids, attention_mask), ref) < 0.5


class ViT(nnx.Module):
    def __init__(self, rngs, patch=4):
        self.patch = nnx.Conv(1, D, (patch, patch), strides=(patch, patch), rngs=rngs)
        self.cls = nnx.Param(jnp.zeros((1, 1, D)))
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 17, D)))
        self.ln = nnx.LayerNorm(D, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(HEADS, D, decode=False, rngs=rngs)
        self.fc1, self.fc2 = nnx.Linear(D, 2 * D, rngs=rngs), nnx.Linear(2 * D, D, rngs=rngs)
        self.head = nnx.Linear(D, 10, rngs=rngs)

    def __call__(self, x):
        p = self.patch(x)
        p = p.reshape(p.shape[0], -1, D)
        h = jnp.concatenate([jnp.broadcast_to(self.cls.get_value(), (p.shape[0], 1, D)), p], 1) + self.pos.get_value()
        h = h + self.attn(self.ln(h))
        h = h + self.fc2(nnx.relu(self.fc1(h)))
        return self.head(h[:, 0])


def test_nnx_vit():
    x = jax.random.normal(jax.random.key(0), (64, 16, 16, 1))
    model = ViT(nnx.Rngs(0))
    res = _prune(model, x, refit=True)
    names = ["patch", "attn/query", "attn/key", "attn/value", "attn/out", "fc1", "fc2", "head"]
    _check(res, names)
    assert _rel(res.model(x), model(x)) < 0.5


def _transformers_flax():
    transformers = pytest.importorskip("transformers")
    try:
        from transformers import BertConfig, FlaxBertForSequenceClassification, FlaxGPT2LMHeadModel, GPT2Config
    except ImportError:  # transformers v5 removed its Flax classes
        pytest.skip(f"transformers {transformers.__version__} has no Flax classes")
    return BertConfig, FlaxBertForSequenceClassification, FlaxGPT2LMHeadModel, GPT2Config


def test_transformers_flax_bert_and_gpt2_when_installed():
    """``transformers``' Flax BERT prunes as its (module, params) pair with its call arguments;
    its Flax GPT-2 is refused in one line naming its FlaxConv1D projections (kernel (out, in),
    not a Flax layer) and its tied head, instead of a bare KeyError."""
    BertConfig, FlaxBert, FlaxGPT2, GPT2Config = _transformers_flax()
    ids = jax.random.randint(jax.random.key(0), (8, SEQ), 0, VOCAB)
    positions = jnp.broadcast_to(jnp.arange(SEQ), ids.shape)
    bert = FlaxBert(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=D,
            num_hidden_layers=2,
            num_attention_heads=HEADS,
            intermediate_size=2 * D,
            max_position_embeddings=SEQ,
            num_labels=3,
        ),
        seed=0,
    )
    kw = {
        "attention_mask": jnp.ones_like(ids),
        "token_type_ids": jnp.zeros_like(ids),
        "position_ids": positions,
        "head_mask": None,
        "deterministic": True,
    }
    res = _prune((bert.module, {"params": bert.params}), ids, model_kwargs=kw)
    block = (
        "attention/self/query",
        "attention/self/key",
        "attention/self/value",
        "attention/output/dense",
        "intermediate/dense",
        "output/dense",
    )
    names = [f"bert/encoder/layer/{i}/{n}" for i in range(2) for n in block]
    _check(res, [*names, "bert/pooler/dense", "classifier"])

    gpt2 = FlaxGPT2(GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=D, n_layer=2, n_head=HEADS), seed=0)
    kw = {"attention_mask": jnp.ones_like(ids), "position_ids": positions, "deterministic": True}
    with pytest.raises(ValueError, match="no prunable layer") as err:
        _prune((gpt2.module, {"params": gpt2.params}), ids, model_kwargs=kw)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1
    assert "transformer/h/0/attn/c_attn" in msg and "is a FlaxConv1D" in msg and "tied embedding" in msg
