"""Inception v3 port: parity with torchvision (random weights), exporter CLI, layer contract, errors.

Same recipe as tests/models/test_googlenet.py (BatchNorm calibrated on random input, random BN affine
parameters); the parity check and its bounds: tests/parity.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import models  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx

torch = pytest.importorskip("torch")

from models import inception_v3 as incv3  # noqa: E402
from fastlayers.pooling import avg_pool2d, max_pool2d  # noqa: E402
from tests.parity import (  # noqa: E402
    Port, calibrate, check_min_input_size, check_missing_weights_name_the_exporter, check_offline_export_fails,
    check_parity, check_stage_contract, check_wrapped_checkpoint_converts_identically, nchw, nhwc,
    pair_fixture, rel_err,
)

SIZE = (139, 123)  # non-square and odd on purpose
PORT = Port("inception_v3", "export_inception_v3.py", SIZE, init=lambda tv: calibrate(tv, (1, 3, *SIZE)))
pair = pair_fixture(PORT, keep_npz=True)


# -- parity --------------------------------------------------------------------------------------

def test_exported_file(pair):
    meta = pair.model.metadata
    assert meta["architecture"] == PORT.name and meta["num_classes"] == 1000
    assert len(pair.model.class_names) == 1000


def test_logits_and_default_layers_match_torchvision(pair):
    check_parity(pair, [*incv3.InceptionV3.DEFAULT_LAYERS, "logits"], seed=0)


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


def test_wrapped_checkpoint_converts_identically(pair):
    # torchvision's raw ImageNet file has AuxLogits keys
    check_wrapped_checkpoint_converts_identically(pair, {"AuxLogits.fc.weight": torch.zeros(1000, 768)})


def test_smallest_input(pair):
    """MIN_INPUT_SIZE is where torchvision still runs, and we agree with it there."""
    check_min_input_size(pair)


# -- contract ------------------------------------------------------------------------------------

def test_stages_contract():
    check_stage_contract(incv3.build())


def test_forward_stops_at_deepest_requested_layer(pair, monkeypatch):
    def unreachable(self, x):
        raise AssertionError("a Mixed block ran although only Conv2d_4a_3x3 was requested")

    monkeypatch.setattr(incv3.InceptionA, "__call__", unreachable)
    x = mx.zeros((1, *SIZE, 3))
    out = pair.model(x, outputs=["Conv2d_4a_3x3"])
    assert list(out) == ["Conv2d_4a_3x3"] and out["Conv2d_4a_3x3"].shape == (1, 31, 27, 192)
    with pytest.raises(AssertionError, match="Mixed block ran"):
        pair.model(x, outputs=["Mixed_5b"])


def test_unknown_layer_lists_valid_names(pair):
    with pytest.raises(models.UnknownLayerError, match="Mixed_6c") as err:
        pair.model(mx.zeros((1, *SIZE, 3)), outputs=["mixed_6c"])
    assert "Valid layers" in str(err.value) and "Conv2d_1a_3x3" in str(err.value)


# -- missing weights, no network -----------------------------------------------------------------

def test_missing_weights_without_network_names_the_exporter(weights_dir: Path, monkeypatch, tmp_path):
    check_missing_weights_name_the_exporter(PORT.name, PORT.script, weights_dir, monkeypatch, tmp_path)


def test_exporter_without_network_fails_cleanly(tmp_path):
    check_offline_export_fails(PORT.script, tmp_path)
