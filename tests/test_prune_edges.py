"""``prune`` report details a newcomer hit (issue 16): per-layer seconds of parallel runs,
the summary line, a warning for layers pruned to all zeros."""

import numpy as np
import pytest
from reference import random_mlp

from nettrim_jax import prune


def _net(seed=0, sizes=(8, 24, 16, 3)):
    return random_mlp(sizes, seed)


def _x(p=120, seed=1):
    return np.random.default_rng(seed).standard_normal((p, 8)).astype(np.float32)


def test_parallel_layer_seconds_add_up_to_at_most_the_run():
    """Each second is charged to one layer (not cumulative from the dispatch start), so the
    per-layer figures cannot add up to more than the whole run; no gamma in the summary."""
    rep = prune(_net(), _x(), scheme="parallel", epsilon=0.05, progress=False, max_iters=400).report
    seconds = [l.seconds for l in rep.layers]
    assert all(s >= 0 for s in seconds)
    assert sum(seconds) <= rep.seconds, (seconds, rep.seconds)
    summary = next(l for l in rep.to_markdown().splitlines() if "Net-Trim" in l and "nonzeros" in l)
    assert summary.startswith("parallel Net-Trim: nonzeros") and "gamma" not in summary


@pytest.mark.parametrize("scheme", ["cascade", "parallel"])
def test_layer_pruned_to_all_zeros_warns(scheme):
    """Every layer pruned to zeros: one warning per layer, then a CollapsedModelError (a
    constant model is no result; the result rides on the error)."""
    import nettrim_jax as nt

    with pytest.warns(RuntimeWarning) as rec, pytest.raises(nt.CollapsedModelError) as err:
        prune(_net(), _x(), scheme=scheme, epsilon=1e9, progress=False, max_iters=400)
    res = err.value.result
    assert res.report.nnz_after == 0 and res.report.output_spread == 0
    assert [str(w.message).split(" was")[0] for w in rec] == ["layer 0", "layer 1", "layer 2"]
    if scheme == "cascade":  # gamma shapes a cascade run: the summary keeps it
        assert next(l for l in res.report.to_markdown().splitlines() if "nonzeros" in l).startswith("cascade Net-Trim (gamma=1.1): nonzeros")
