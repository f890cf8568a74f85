"""The ``nettrim`` command line: prune / resume / report / demo, exit codes, one-line errors.

Most runs call ``cli.main`` in-process (fast); a few go through a real interpreter to check
what a shell script sees (exit status, a single stderr line, no traceback).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from cli_setup import FAST, mlp_layers, prune_args, run, write_setup

from nettrim_jax.cli import app as cli
from nettrim_jax.io import checkpoint as ck
from nettrim_jax.io import convert

# FAST runs stop at 400 iterations: unconverged solves are expected and reported in the tables
pytestmark = pytest.mark.filterwarnings("ignore:Net-Trim solve did not converge:RuntimeWarning")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return (root, *write_setup(root))


def test_prune_cascade_writes_checkpoint_and_report(setup, tmp_path, capsys):
    root, layers, x, y = setup
    out = tmp_path / "out"
    rc, stdout, err = run(prune_args(root, out), capsys)
    assert rc == cli.EXIT_OK, err
    assert err == ""  # --quiet
    pruned = ck.load(out / "model")
    assert [l["kernel"].shape for l in pruned.layers] == [l["kernel"].shape for l in layers]
    report = json.loads((out / "report.json").read_text())
    assert report["scheme"] == "cascade" and len(report["layers"]) == 3
    for row, lo, lp in zip(report["layers"], layers, pruned.layers):
        assert row["nnz_before"] == np.count_nonzero(lo["kernel"]) + np.count_nonzero(lo["bias"])
        assert row["nnz_after"] == np.count_nonzero(lp["kernel"]) + np.count_nonzero(lp["bias"])
        assert row["nnz_after"] <= row["nnz_before"]
    assert sum(r["nnz_after"] for r in report["layers"]) < sum(r["nnz_before"] for r in report["layers"])
    # the recorded discrepancy is the real one
    h0 = convert.apply(layers[:1], x)
    h1 = convert.apply(pruned.layers[:1], x)
    assert report["layers"][0]["discrepancy"] == pytest.approx(np.linalg.norm(h1 - h0) / np.linalg.norm(h0), rel=1e-4)
    assert report["run"]["accuracy_before"] == 1.0
    assert 0 <= report["run"]["accuracy_after"] <= 1
    assert not (out / "partial.state").exists()
    assert "pruned checkpoint" in stdout
    assert stdout.strip().splitlines()[-1].endswith("3/3 solves converged")  # the final line counts them
    md = (out / "report.md").read_text()
    assert "; 3/3 solves converged;" in md  # and the report's summary line
    assert "| 0 | dense | relu | 9 | 16 | 150 |" in md  # N includes the bias row
    assert report["options"]["epsilon"] == 0.05 and report["options"]["max_iters"] == 400


def test_cli_refit_lowers_misfit_same_support(setup, tmp_path, capsys):
    """``--refit --finish none``: the library's refit, reached through ``prune``: the first
    layer keeps the same support as without it and fits better; ``--refit`` alone adds the
    l0 finish."""
    root, _, _, _ = setup
    reps = {}
    for name, extra in (("plain", ()), ("refit", ("--refit", "--finish", "none")), ("finish", ("--refit",))):
        rc, _, err = run(prune_args(root, tmp_path / name, *extra), capsys)
        assert rc == cli.EXIT_OK, err
        reps[name] = json.loads((tmp_path / name / "report.json").read_text())
    plain, refit = reps["plain"]["layers"][0], reps["refit"]["layers"][0]
    assert refit["nnz_after"] == plain["nnz_after"] and refit["misfit"] < plain["misfit"]
    assert reps["refit"]["options"]["refit"] is True and reps["refit"]["options"]["finish"] is None
    # --refit alone ends with the l0 finish: the count kept (or one or two fewer), never a worse fit
    finish = reps["finish"]["layers"][0]
    assert reps["finish"]["options"]["finish"] == "l0"
    assert plain["nnz_after"] - 2 <= finish["nnz_after"] <= plain["nnz_after"]
    assert finish["misfit"] <= refit["misfit"] * (1 + 1e-4)


def test_cli_output_epsilon(setup, tmp_path, capsys):
    """``--output-epsilon``: the output layer gets that budget (or the least-squares floor),
    the option is recorded in the report, and it is refused for parallel."""
    root, layers, x, _ = setup
    out = tmp_path / "out"
    rc, _, err = run(prune_args(root, out, "--output-epsilon", "0.03"), capsys)
    assert rc == cli.EXIT_OK, err
    report = json.loads((out / "report.json").read_text())
    z = convert.apply(layers, x)
    assert report["options"]["output_epsilon"] == 0.03
    assert report["layers"][-1]["epsilon"] >= 0.03 * np.linalg.norm(z) * (1 - 1e-6)
    assert report["bound"] == pytest.approx(report["layers"][-1]["epsilon"])
    rc, _, err = run(prune_args(root, tmp_path / "p", "--scheme", "parallel", "--output-epsilon", "0.03"), capsys)
    assert rc == cli.EXIT_USAGE and "--output-epsilon applies to --scheme cascade only" in err


def test_interrupted_cascade_resumes_from_last_finished_layer(setup, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the second layer's solve: the first layer is kept in OUT/partial.state;
    --resume solves only layers 1 and 2 and gives bit for bit the uninterrupted result."""
    import nettrim_jax.network.problems as problems

    root, layers, _, _ = setup
    rc, _, err = run(prune_args(root, tmp_path / "full"), capsys)
    assert rc == cli.EXIT_OK, err
    full = ck.load(tmp_path / "full" / "model").layers

    out = tmp_path / "out"
    real = problems.dispatch
    calls = []
    armed = [True]

    def interrupt_second(*a, **k):
        calls.append(1)
        if armed[0] and len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(problems, "dispatch", interrupt_second)
    rc, _, err = run(prune_args(root, out), capsys)
    assert rc == cli.EXIT_INTERRUPTED
    assert (out / "partial.state").is_file() and not (out / "report.json").exists()
    assert not (out / "model").exists()
    from nettrim_jax.io.state import load_state

    state, _ = load_state(out / "partial.state")
    assert state.finished == 1 and state.outcomes[0] is not None

    rc, _, err = run(["report", out], capsys)
    assert rc == cli.EXIT_USAGE and "--resume" in err
    rc, _, err = run(prune_args(root, out), capsys)  # no --resume: refused, nothing touched
    assert rc == cli.EXIT_USAGE and "unfinished run" in err
    rc, _, err = run(
        ["prune", root / "ckpt", "--data", root / "calib.npz", "--epsilon", "0.1", "--out", out, "--resume", *FAST],
        capsys,
    )
    assert rc == cli.EXIT_USAGE and "different inputs or settings (epsilon)" in err

    calls.clear()
    armed[0] = False
    rc, _, err = run(prune_args(root, out, "--resume"), capsys)
    assert rc == cli.EXIT_OK, err
    assert len(calls) == 2  # layers 1 and 2 only
    resumed = ck.load(out / "model").layers
    for a, b in zip(resumed, full):
        np.testing.assert_array_equal(a["kernel"], b["kernel"])
        np.testing.assert_array_equal(a["bias"], b["bias"])
    assert not (out / "partial.state").exists()


def test_interrupt_before_the_first_layer_leaves_no_folder(setup, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the first layer's solve: OUT is not created (it was, empty, and a rerun
    with --resume then refused it), so the same command simply runs again."""
    import nettrim_jax.network.problems as problems

    root, _, _, _ = setup
    out = tmp_path / "out"

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(problems, "dispatch", interrupt)
    rc, _, err = run(prune_args(root, out), capsys)
    assert rc == cli.EXIT_INTERRUPTED and not out.exists()
    monkeypatch.undo()
    rc, _, err = run(prune_args(root, out), capsys)
    assert rc == cli.EXIT_OK, err


def test_parallel_report_and_plot(setup, tmp_path, capsys):
    root, layers, _, _ = setup
    out = tmp_path / "par"
    rc, _, err = run(prune_args(root, out, "--scheme", "parallel"), capsys)
    assert rc == cli.EXIT_OK, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["scheme"] == "parallel" and "(gamma" not in (out / "report.md").read_text()
    rc, stdout, _ = run(["report", out], capsys)
    assert rc == 0 and stdout == (out / "report.md").read_text()
    rc, stdout, _ = run(["report", out, "--json"], capsys)
    assert rc == 0 and json.loads(stdout) == rep
    rc, stdout, _ = run(["report", out, "--plot", tmp_path / "fig.png"], capsys)
    assert rc == 0 and (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an existing result is never overwritten silently
    rc, _, err = run(prune_args(root, out, "--scheme", "parallel"), capsys)
    assert rc == cli.EXIT_USAGE and "--force" in err
    rc, _, err = run(prune_args(root, out, "--force"), capsys)
    assert rc == cli.EXIT_OK and json.loads((out / "report.json").read_text())["scheme"] == "cascade"


def test_strict_exit_code_when_not_converged(setup, tmp_path, capsys, monkeypatch):
    import nettrim_jax.network.problems as problems

    root, _, _, _ = setup
    real = problems.solved_outcome

    def unconverged(*a, **k):
        return real(*a, **k)._replace(converged=False)

    for mod in ("cascade", "parallel"):
        monkeypatch.setattr(f"nettrim_jax.network.{mod}.solved_outcome", unconverged)
    rc, stdout, _ = run(prune_args(root, tmp_path / "o", "--strict"), capsys)
    assert rc == cli.EXIT_NOT_CONVERGED
    rep = json.loads((tmp_path / "o" / "report.json").read_text())  # results are still written
    assert [r["converged"] for r in rep["layers"]] == [False] * 3
    assert "0/3 solves converged (3 NOT certified)" in stdout.strip().splitlines()[-1]
    assert "0/3 solves converged (3 NOT certified)" in (tmp_path / "o" / "report.md").read_text()
    rc, _, _ = run(prune_args(root, tmp_path / "o2"), capsys)  # without --strict: 0
    assert rc == cli.EXIT_OK


def test_data_formats(setup, tmp_path):
    _, layers, x, y = setup
    np.save(tmp_path / "x.npy", x.reshape(150, 2, 4))
    got, lab = cli.load_calibration(tmp_path / "x.npy", (8,))
    assert got.shape == (150, 8) and lab is None
    np.savez(tmp_path / "d.npz", inputs=x, labels=y)
    got, lab = cli.load_calibration(tmp_path / "d.npz", (8,), samples=20)
    assert got.shape == (20, 8) and lab.shape == (20,)
    # a folder of MNIST-format IDX files
    import struct

    imgs = (np.arange(5 * 28 * 28) % 256).astype(np.uint8).reshape(5, 28, 28)
    (tmp_path / "mn").mkdir()
    (tmp_path / "mn" / "train-images-idx3-ubyte").write_bytes(
        struct.pack(">HBBIII", 0, 8, 3, 5, 28, 28) + imgs.tobytes()
    )
    (tmp_path / "mn" / "train-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 8, 1, 5) + bytes(range(5)))
    got, lab = cli.load_calibration(tmp_path / "mn", (28, 28, 1))
    assert got.shape == (5, 28, 28, 1) and got.max() <= 1 and list(lab) == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- bad input


def _bad_cases(root, tmp_path, x):
    def npz(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    nan = x.copy()
    nan[3, 2] = np.nan
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes((root / "calib.npz").read_bytes()[:200])
    return {
        "wrong data shape": (["--data", npz("w.npz", x=x[:, :5])], "the model expects input shape (8,)"),
        "nan in data": (["--data", npz("n.npz", x=nan)], "1 NaN or Inf"),
        "empty calibration set": (["--data", npz("e.npz", x=x[:0])], "empty calibration set"),
        "epsilon < 0": (["--epsilon", "-0.1"], "--epsilon must be >= 0"),
        "epsilon nan": (["--epsilon", "nan"], "--epsilon must be >= 0"),
        "gamma < 1": (["--gamma", "0.9"], "--gamma must be >= 1"),
        "samples 0": (["--samples", "0"], "--samples must be >= 1"),
        "reweight < 0": (["--reweight", "-1"], "--reweight must be >= 0"),
        "missing data": (["--data", tmp_path / "none.npz"], "no such file"),
        "pickled data": (["--data", obj], "refused"),
        "truncated data": (["--data", trunc], "corrupt or truncated"),
        "bad labels": (["--data", npz("l.npz", x=x, y=np.zeros(3, np.int32))], "do not match 150 samples"),
        "resume + parallel": (["--scheme", "parallel", "--resume"], "cascade only"),
        "epsilon + sparsity": (["--sparsity", "0.5"], "not both"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong data shape",
        "nan in data",
        "empty calibration set",
        "epsilon < 0",
        "epsilon nan",
        "gamma < 1",
        "samples 0",
        "reweight < 0",
        "missing data",
        "pickled data",
        "truncated data",
        "bad labels",
        "resume + parallel",
        "epsilon + sparsity",
    ],
)
def test_bad_input_exit_2_one_line_nothing_written(setup, tmp_path, capsys, case):
    root, _, x, _ = setup
    extra, expect = _bad_cases(root, tmp_path, x)[case]
    args = ["prune", root / "ckpt", "--data", root / "calib.npz", "--epsilon", "0.05", "--out", tmp_path / "out", *FAST]
    for k in range(0, len(extra), 2):  # later flags override earlier ones
        args += extra[k : k + 2]
    rc, stdout, err = run(args, capsys)
    assert rc == cli.EXIT_USAGE
    assert err.startswith("nettrim: error: ") and err.count("\n") == 1, err
    assert expect in err
    assert not (tmp_path / "out").exists()


def _edit_model(path, fn):
    m = json.loads((path / "model.json").read_text())
    fn(m)
    (path / "model.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "case, damage, expect",
    [
        (
            "unsupported layer type",
            lambda p: _edit_model(p, lambda m: m["layers"][1].update(type="lstm")),
            "unsupported type 'lstm'",
        ),
        (
            "non-ReLU hidden activation",
            lambda p: _edit_model(p, lambda m: m["layers"][0].update(activation="tanh")),
            "unsupported activation 'tanh'",
        ),
        (
            "mismatched layers",
            lambda p: _edit_model(p, lambda m: m.update(input_shape=[9])),
            "expects 8 inputs, but the previous layer gives 9",
        ),
        (
            "truncated weights",
            lambda p: [w.write_bytes(w.read_bytes()[:64]) for w in p.glob("weights-*")],
            "corrupt or truncated",
        ),
    ],
)
def test_bad_checkpoint_exit_2(setup, tmp_path, capsys, case, damage, expect):
    root, layers, _, _ = setup
    bad = ck.save(tmp_path / "bad", layers, (8,))
    damage(bad)
    rc, _, err = run(
        ["prune", bad, "--data", root / "calib.npz", "--epsilon", "0.05", "--out", tmp_path / "out", *FAST], capsys
    )
    assert rc == cli.EXIT_USAGE and expect in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_nan_weights_checkpoint_exit_2(setup, tmp_path, capsys):
    """A checkpoint whose (checksum-consistent) weights hold NaN is refused on load."""
    import hashlib

    from safetensors.numpy import save_file

    root, layers, _, _ = setup
    path = ck.save(tmp_path / "nanw", layers, (8,))
    (w,) = list(path.glob("weights-*"))
    tensors = {f"{i}.{n}": l[n].copy() for i, l in enumerate(layers) for n in ("kernel", "bias")}
    tensors["1.kernel"][0, 0] = np.inf
    save_file(tensors, w)
    _edit_model(path, lambda m: m["weights"].update(sha256=hashlib.sha256(w.read_bytes()).hexdigest()))
    rc, _, err = run(
        ["prune", path, "--data", root / "calib.npz", "--epsilon", "0.05", "--out", tmp_path / "out", *FAST], capsys
    )
    assert rc == cli.EXIT_USAGE and "layer 1 kernel contains NaN or Inf" in err


def test_dead_layer_prunes_to_zero(tmp_path, capsys):
    """A layer whose outputs are all zero on the calibration data: documented behaviour is
    an all-zero kernel (and bias) for it, converged, and a finished run."""
    layers = mlp_layers()
    layers[0]["bias"] = np.full(16, -100.0, np.float32)  # relu(x W - 100) == 0
    ck.save(tmp_path / "dead", layers, (8,))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((150, 8)).astype(np.float32))
    rc, _, err = run(
        [
            "prune",
            tmp_path / "dead",
            "--data",
            tmp_path / "x.npy",
            "--epsilon",
            "0.05",
            "--out",
            tmp_path / "out",
            *FAST,
        ],
        capsys,
    )
    assert rc == cli.EXIT_OK, err
    pruned = ck.load(tmp_path / "out" / "model").layers
    assert not np.any(pruned[0]["kernel"]) and not np.any(pruned[0]["bias"])
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["layers"][0]["nnz_after"] == 0 and rep["layers"][0]["converged"]


def test_fewer_samples_than_inputs_and_rank_deficient_data(setup, tmp_path, capsys):
    """P < N and rank-deficient calibration data are legal: the run finishes and every
    weighted layer meets its misfit budget (up to the solver's tolerance)."""
    root, layers, x, _ = setup
    low = np.concatenate([x[:, :4], x[:, :4]], 1)  # rank 4 < 8 inputs
    cases = {"few": x[:5], "rank": low}
    for name, data in cases.items():
        np.save(tmp_path / f"{name}.npy", data)
        rc, _, err = run(
            [
                "prune",
                root / "ckpt",
                "--data",
                tmp_path / f"{name}.npy",
                "--epsilon",
                "0.05",
                "--out",
                tmp_path / name,
                "-q",
                "--max-iters",
                "2000",
            ],
            capsys,
        )
        assert rc == cli.EXIT_OK, err
        rep = json.loads((tmp_path / name / "report.json").read_text())
        for row in rep["layers"]:
            assert row["misfit"] <= row["epsilon"] * 1.01 + 1e-6


def test_report_errors(tmp_path, capsys):
    rc, _, err = run(["report", tmp_path], capsys)
    assert rc == cli.EXIT_USAGE and "no report.json" in err
    (tmp_path / "report.json").write_text("{not json")
    rc, _, err = run(["report", tmp_path], capsys)
    assert rc == cli.EXIT_USAGE and "corrupt report" in err


def test_usage_errors(capsys):
    assert run([], capsys)[0] == cli.EXIT_USAGE
    assert run(["frobnicate"], capsys)[0] == cli.EXIT_USAGE
    assert run(["prune", "x"], capsys)[0] == cli.EXIT_USAGE  # --data, --epsilon, --out missing
    assert run(["demo", "--steps", "0"], capsys)[0] == cli.EXIT_USAGE
    assert run(["--help"], capsys)[0] == cli.EXIT_OK


def test_unexpected_error_exit_1(setup, tmp_path, capsys, monkeypatch):
    root, _, _, _ = setup

    def boom(*a, **k):
        raise RuntimeError("solver exploded\ndeep detail")

    monkeypatch.setattr("nettrim_jax.network.prune.solve_cascade", boom)
    rc, _, err = run(prune_args(root, tmp_path / "o"), capsys)
    assert rc == cli.EXIT_FAILURE
    assert err == "nettrim: error: unexpected RuntimeError: solver exploded (set NETTRIM_DEBUG=1 for a traceback)\n"


def test_real_process_exit_codes(setup, tmp_path):
    """What a shell script sees: status 2, one stderr line, no traceback."""
    root, layers, _, _ = setup
    bad = ck.save(tmp_path / "bad", layers, (8,))
    (bad / "model.json").write_text((bad / "model.json").read_text()[:40])
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "nettrim_jax.cli",
            "prune",
            str(bad),
            "--data",
            str(root / "calib.npz"),
            "--epsilon",
            "0.05",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.startswith(f"nettrim: error: {bad / 'model.json'}: invalid JSON")
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_demo_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    rc, stdout, err = run(
        ["demo", "--out", out, "--steps", "100", "--max-iters", "300", "--calibration", "300", "-q"], capsys
    )
    assert rc == cli.EXIT_OK, err
    for f in (
        "report.md",
        "report.json",
        "report.png",
        "model/model.json",
        "original/model.json",
        "calibration.npz",
        "test.npz",
    ):
        assert (out / f).exists(), f
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["layers"]) == 3 and rep["run"]["accuracy_before"] > 0.8
    assert rep["nnz_after"] < rep["nnz_before"]
    assert rep["run"]["samples"] == 300
    np.testing.assert_array_equal(ck.load(out / "original").layers[0]["kernel"].shape, (64, 64))


def test_conv_checkpoint_cascade_matches_library(tmp_path, capsys):
    """An NNX conv -> maxpool -> flatten -> dense model: described by ``convert.from_model``,
    pruned by the CLI, against ``prune`` on the NNX model itself; the pruned checkpoint loads
    back into the user's model (``convert.load_into``) with the same outputs."""
    from nettrim_jax import prune, training

    model = training.make_cnn(channels=(3,), hidden=8, num_classes=4, image_size=6, seed=0)
    x = np.random.default_rng(0).random((20, 36)).astype(np.float32)  # flat images: reshaped
    layers, shape = convert.from_model(model, x[:4].reshape(4, 6, 6, 1))
    assert [l["type"] for l in layers] == ["conv", "maxpool", "flatten", "dense", "dense"]
    ck.save(tmp_path / "cnn", layers, shape)
    np.save(tmp_path / "x.npy", x)
    rc, _, err = run(
        [
            "prune",
            tmp_path / "cnn",
            "--data",
            tmp_path / "x.npy",
            "--epsilon",
            "0.1",
            "--max-patches",
            "300",
            "--out",
            tmp_path / "o",
            *FAST,
        ],
        capsys,
    )
    assert rc == cli.EXIT_OK, err
    mine = ck.load(tmp_path / "o" / "model").layers
    images = x.reshape(20, 6, 6, 1)
    res = prune(model, images, scheme="cascade", epsilon=0.1, max_patches=300, progress=False, max_iters=400)
    theirs, _ = convert.from_model(res.model, images[:4])
    for a, b in zip(mine, theirs):
        if a["type"] in ("conv", "dense"):
            np.testing.assert_allclose(a["kernel"], b["kernel"], atol=2e-3 * np.abs(b["kernel"]).max())
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["layers"][0]["subsampled"] and rep["layers"][0]["rows"] == 300
    back = convert.load_into(model, mine, images[:4])
    np.testing.assert_allclose(np.asarray(back(images)), convert.apply(mine, images), rtol=1e-5, atol=1e-5)


def test_prune_pattern_flag_keeps_n_of_every_m_inputs(tmp_path, capsys):
    """``--pattern 2:4``: in the saved model every output unit keeps at most 2 of each 4
    consecutive inputs, and the report records the pattern."""
    write_setup(tmp_path)
    rc, _, err = run(prune_args(tmp_path, tmp_path / "out", "--pattern", "2:4"), capsys)
    assert rc == 0, err
    layers = ck.load(tmp_path / "out" / "model").layers
    for layer in layers:
        k = np.asarray(layer["kernel"])
        groups = (k.reshape(k.shape[0] // 4, 4, k.shape[1]) != 0).sum(axis=1)
        assert groups.max() <= 2, groups
    assert sum(int((np.asarray(l["kernel"]) != 0).sum()) for l in layers) <= 0.5 * (8 * 16 + 16 * 12 + 12 * 3)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["options"]["pattern"] == "2:4"


def test_prune_joint_refit_flag(tmp_path, capsys):
    """``--joint-refit 30``: the saved model has the layer-wise run's supports, a lower
    output error on the calibration data, and the report says how the joint refit ended."""
    layers, x, _ = write_setup(tmp_path)
    assert run(prune_args(tmp_path, tmp_path / "a"), capsys)[0] == 0
    rc, _, err = run(prune_args(tmp_path, tmp_path / "b", "--joint-refit", "30"), capsys)
    assert rc == 0, err
    a, b = ck.load(tmp_path / "a" / "model").layers, ck.load(tmp_path / "b" / "model").layers
    for la, lb in zip(a, b):
        np.testing.assert_array_equal(np.asarray(la["kernel"]) != 0, np.asarray(lb["kernel"]) != 0)
    dense = convert.apply(layers, x)
    err_a, err_b = (np.sum((convert.apply(m, x) - dense) ** 2) / np.sum(dense**2) for m in (a, b))
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["options"]["joint_refit"] == 30
    assert report["joint"]["loss_after"] == pytest.approx(err_b, rel=1e-3, abs=1e-7)
    assert err_b < err_a
    assert "Joint refit:" in (tmp_path / "b" / "report.md").read_text()


def test_prune_joint_refit_auto_is_the_default_with_refit(tmp_path, capsys):
    """``--refit`` alone: the report records ``joint_refit="auto"`` resolved to 100 iterations
    at the error floor of a model without a convolution, 0, and says how the joint refit
    ended (run); ``--joint-refit 0`` turns it off; a value that is neither a count nor "auto"
    is a usage error."""
    write_setup(tmp_path)
    rc, _, err = run(prune_args(tmp_path, tmp_path / "a", "--refit"), capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["options"]["joint_refit"] == "auto"
    assert (report["options"]["joint_iters"], report["options"]["joint_min_loss"]) == (100, 0.0)
    j = report["joint"]
    assert j["stopped"] != "small error" and j["iterations"] >= 1
    assert run(prune_args(tmp_path, tmp_path / "b", "--refit", "--joint-refit", "0"), capsys)[0] == 0
    off = json.loads((tmp_path / "b" / "report.json").read_text())
    assert off["options"]["joint_iters"] == 0 and not off["joint"]
    rc, _, err = run(prune_args(tmp_path, tmp_path / "c", "--joint-refit", "some"), capsys)
    assert rc == cli.EXIT_USAGE and "expected 'auto' or an iteration count >= 0" in err
