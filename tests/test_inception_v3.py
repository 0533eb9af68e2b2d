"""Inception v3 port: parity with torchvision (random weights), exporter CLI, layer contract, errors.

Same recipe as tests/test_googlenet.py, whose helpers this file reuses (see its docstring for
why the input-gradient comparison replays torch's max-pool choices).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import models
import mlx.core as mx
import mlx.nn as nn

torch = pytest.importorskip("torch")

from models import googlenet as gnet  # noqa: E402
from models import inception_v3 as incv3  # noqa: E402
from models.convert import export_model  # noqa: E402
from models.layers import avg_pool2d, max_pool2d  # noqa: E402
from test_googlenet import (  # noqa: E402
    assert_offline_export_fails,
    calibrated_reference,
    check_parity,
    force_offline,
    nchw,
    nhwc,
    rel_err,
    run_exporter,
)

NAME = "inception_v3"
EXPORTER = "export_inception_v3.py"
INPUT_SHAPE = (1, 3, 139, 123)  # NCHW, non-square and odd on purpose
# InceptionB/D call max_pool2d directly; the stem's MaxPool2d modules come from models.googlenet.
POOL_MODULES = [incv3, gnet]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> SimpleNamespace:
    """Reference model, its checkpoint, our exporter run on it (CLI), and our loaded model."""
    tmp = tmp_path_factory.mktemp("inception_v3")
    ref = calibrated_reference(NAME, INPUT_SHAPE, seed=0)
    pth, npz = tmp / "ref.pth", tmp / "ref.npz"
    torch.save(ref.state_dict(), pth)
    proc = run_exporter(EXPORTER, "--from-pth", str(pth), "--out", str(npz))
    assert proc.returncode == 0, proc.stderr
    ours = models.load_model(NAME, weights=npz)
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    return SimpleNamespace(ref=ref, pth=pth, npz=npz, ours=ours, x=x, tmp=tmp)


# -- parity --------------------------------------------------------------------------------------

def test_exported_file(setup):
    meta = setup.ours.metadata
    assert meta["architecture"] == NAME and meta["num_classes"] == 1000
    assert len(setup.ours.class_names) == 1000


def test_logits_and_default_layers_match_torchvision(setup):
    layers = [*incv3.InceptionV3.DEFAULT_LAYERS, "logits"]
    errors = check_parity(setup.ours, setup.ref, POOL_MODULES, layers, setup.x)
    for layer, (act_err, grad_err) in errors.items():
        assert act_err < 1e-4, (layer, act_err)
        assert grad_err < 1e-3, (layer, grad_err)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pool_backward_matches_torch(pool):
    """Our pools' own backward, on tie-free input, as Inception v3 uses them."""
    x = np.random.default_rng(5).standard_normal((1, 5, 14, 11)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    if pool == "max":  # stem and grid reductions: 3x3 stride 2, floor mode
        ref_out = torch.nn.functional.max_pool2d(xt, 3, 2)
        fn = lambda z: max_pool2d(z, 3, 2)  # noqa: E731
    else:  # branch_pool: 3x3 stride 1 pad 1, zero padding counted
        ref_out = torch.nn.functional.avg_pool2d(xt, 3, 1, 1)
        fn = lambda z: avg_pool2d(z, 3, 1, 1, count_include_pad=True)  # noqa: E731
    w = np.random.default_rng(6).standard_normal(ref_out.shape).astype(np.float32)
    (ref_out * torch.from_numpy(w)).sum().backward()
    grad = mx.grad(lambda z: (fn(z) * nhwc(w)).sum())(nhwc(x))
    assert rel_err(nchw(fn(nhwc(x))), ref_out.detach().numpy()) < 1e-6
    assert rel_err(nchw(grad), xt.grad.numpy()) < 1e-6


def test_wrapped_checkpoint_converts_identically(setup):
    """A DataParallel ("module.") checkpoint inside {"state_dict": ...}, with AuxLogits keys
    (torchvision's raw ImageNet file has them), gives the same file."""
    state = dict(setup.ref.state_dict())
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    pth = setup.tmp / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pth)
    out = export_model(NAME, out=setup.tmp / "wrapped.npz", from_pth=pth)
    plain, again = np.load(setup.npz), np.load(out)
    arrays = [k for k in plain.files if k != "__metadata__"]
    assert sorted(arrays) == sorted(k for k in again.files if k != "__metadata__")
    for key in arrays:
        np.testing.assert_array_equal(plain[key], again[key])


def test_smallest_input(setup):
    """MIN_INPUT_SIZE is where torchvision still runs, and we agree with it there."""
    size = incv3.InceptionV3.MIN_INPUT_SIZE
    x = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = setup.ref(torch.from_numpy(x)).numpy()
        with pytest.raises(RuntimeError):
            setup.ref(torch.zeros(1, 3, size - 1, size - 1))
    assert rel_err(np.asarray(setup.ours(nhwc(x))["logits"]), ref) < 1e-4


# -- contract ------------------------------------------------------------------------------------

def test_stages_contract():
    model = incv3.build()
    names = [name for name, _ in model.stages()]
    assert names[-1] == "logits" and set(model.LAYER_NAMES) <= set(names)
    assert set(model.DEFAULT_LAYERS) <= set(model.LAYER_NAMES)
    for name, fn in model.stages():
        # a stage with parameters must be the module itself, so training can freeze it
        if not isinstance(fn, nn.Module):
            assert getattr(fn, "__self__", None) is model, name


def test_forward_stops_at_deepest_requested_layer(setup, monkeypatch):
    def unreachable(self, x):
        raise AssertionError("a Mixed block ran although only Conv2d_4a_3x3 was requested")

    monkeypatch.setattr(incv3.InceptionA, "__call__", unreachable)
    out = setup.ours(nhwc(setup.x), outputs=["Conv2d_4a_3x3"])
    assert list(out) == ["Conv2d_4a_3x3"] and out["Conv2d_4a_3x3"].shape == (1, 31, 27, 192)
    with pytest.raises(AssertionError, match="Mixed block ran"):
        setup.ours(nhwc(setup.x), outputs=["Mixed_5b"])


def test_unknown_layer_lists_valid_names(setup):
    with pytest.raises(models.UnknownLayerError, match="Mixed_6c") as err:
        setup.ours(nhwc(setup.x), outputs=["mixed_6c"])
    assert "Valid layers" in str(err.value) and "Conv2d_1a_3x3" in str(err.value)


# -- missing weights, no network -----------------------------------------------------------------

def test_missing_weights_without_network_names_the_exporter(weights_dir: Path, monkeypatch, tmp_path):
    empty = weights_dir / "inception_v3_offline"  # our own corner of the shared folder
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("DEEPDREAM_WEIGHTS_DIR", str(empty))
    force_offline(monkeypatch, tmp_path)
    with pytest.raises(models.WeightsError) as err:
        models.load_model(NAME)
    message = str(err.value)
    assert EXPORTER in message and "--from-pth" in message and "\n" not in message
    assert list(empty.iterdir()) == []


def test_exporter_without_network_fails_cleanly(tmp_path):
    assert_offline_export_fails(EXPORTER, tmp_path)
