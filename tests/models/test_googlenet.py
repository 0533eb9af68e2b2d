"""GoogLeNet port: parity with torchvision (random weights), exporter CLI, layer contract, errors.

The reference is torchvision's GoogLeNet with random weights whose BatchNorm statistics are
calibrated on random input (as trained weights would be) and whose BN affine parameters are
random, so that a swapped or misnamed BN tensor cannot go unnoticed. The parity recipe and its
bounds: tests/parity.py. Our max-pool and Conv+BN+ReLU backward passes are also compared to
torch's on their own, on small inputs without near-ties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import models  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx

torch = pytest.importorskip("torch")

from convert.torch_weights import convert_torch_state_dict  # noqa: E402
from models import googlenet as gnet  # noqa: E402
from tests.parity import (  # noqa: E402
    Port, calibrate, check_min_input_size, check_missing_weights_name_the_exporter, check_offline_export_fails,
    check_parity, check_stage_contract, check_wrapped_checkpoint_converts_identically, nchw, nhwc,
    pair_fixture, rel_err,
)

SIZE = (200, 160)  # non-square on purpose
PORT = Port("googlenet", "export_googlenet.py", SIZE, init=lambda tv: calibrate(tv, (1, 3, *SIZE)))
pair = pair_fixture(PORT, keep_npz=True)


# -- parity --------------------------------------------------------------------------------------

def test_exported_file(pair):
    meta = pair.model.metadata
    assert meta["architecture"] == PORT.name and meta["num_classes"] == 1000
    assert len(pair.model.class_names) == 1000
    assert not any(k.startswith(("aux1", "aux2")) for k in np.load(pair.npz).files)


def test_logits_and_default_layers_match_torchvision(pair):
    check_parity(pair, [*gnet.GoogLeNet.DEFAULT_LAYERS, "logits"], seed=0)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 0), (3, 1, 1), (2, 2, 0)])
def test_max_pool_backward_matches_torch(kernel, stride, padding):
    """Our pool's own backward (as_strided windows), on tie-free input, for GoogLeNet's pools."""
    x = np.random.default_rng(kernel + stride).standard_normal((1, 5, 13, 10)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = torch.nn.functional.max_pool2d(xt, kernel, stride, padding, ceil_mode=True)
    w = np.random.default_rng(7).standard_normal(out.shape).astype(np.float32)
    (out * torch.from_numpy(w)).sum().backward()
    pool = gnet.MaxPool2d(kernel, stride, padding, ceil_mode=True)
    grad = mx.grad(lambda z: (pool(z) * nhwc(w)).sum())(nhwc(x))
    assert rel_err(nchw(pool(nhwc(x))), out.detach().numpy()) == 0.0
    assert rel_err(nchw(grad), xt.grad.numpy()) < 1e-6


def test_basic_conv_backward_matches_torch():
    """Conv + BN + ReLU on its own, where the ReLU really cuts."""
    from torchvision.models.googlenet import BasicConv2d as TorchBasicConv2d

    torch.manual_seed(4)
    ref = calibrate(TorchBasicConv2d(6, 8, kernel_size=3, padding=1), (1, 6, 9, 7))
    block = gnet.BasicConv2d(6, 8, kernel_size=3, padding=1)
    block.load_weights([(k, mx.array(v)) for k, v in convert_torch_state_dict("googlenet", ref.state_dict()).items()])
    block.eval()
    x = np.random.default_rng(4).standard_normal((1, 6, 9, 7)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = ref(xt)
    w = np.random.default_rng(8).standard_normal(out.shape).astype(np.float32)
    (out * torch.from_numpy(w)).sum().backward()
    grad = mx.grad(lambda z: (block(z) * nhwc(w)).sum())(nhwc(x))
    assert 0.2 < float((out > 0).float().mean()) < 0.8  # the ReLU really cuts
    assert rel_err(nchw(block(nhwc(x))), out.detach().numpy()) < 1e-5
    assert rel_err(nchw(grad), xt.grad.numpy()) < 1e-5


def test_wrapped_checkpoint_converts_identically(pair):
    # torchvision's raw ImageNet file carries aux heads
    check_wrapped_checkpoint_converts_identically(pair, {"aux1.fc2.bias": torch.zeros(1000)})


def test_smallest_input(pair):
    """MIN_INPUT_SIZE is where torchvision still runs, and we agree with it there."""
    check_min_input_size(pair)


# -- aux heads -----------------------------------------------------------------------------------

def test_aux_heads_match_torchvision():
    import torchvision

    torch.manual_seed(3)
    ref = calibrate(torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True,
                                                 init_weights=True), (1, 3, 112, 96))
    ours = gnet.build(aux_logits=True)
    ours.load_weights([(k, mx.array(v)) for k, v in
                       convert_torch_state_dict("googlenet", ref.state_dict(), keep_aux=True).items()], strict=True)
    ours.eval()
    # 112x96: aux inputs are 7x6, so the 4x4 adaptive pool has uneven bins
    x = np.random.default_rng(2).standard_normal((1, 3, 112, 96)).astype(np.float32)
    feats = {}
    hooks = [ref.inception4a.register_forward_hook(lambda m, i, o: feats.setdefault("4a", o)),
             ref.inception4d.register_forward_hook(lambda m, i, o: feats.setdefault("4d", o))]
    with torch.no_grad():
        logits = ref(torch.from_numpy(x)).numpy()
        aux1, aux2 = ref.aux1(feats["4a"]).numpy(), ref.aux2(feats["4d"]).numpy()
    for h in hooks:
        h.remove()
    got = ours.forward_with_aux(nhwc(x))
    for name, mine, theirs in zip(("logits", "aux1", "aux2"), got, (logits, aux1, aux2)):
        assert rel_err(np.asarray(mine), theirs) < 1e-4, name
    with pytest.raises(ValueError, match="aux_logits=True"):
        gnet.build().forward_with_aux(nhwc(x))


# -- contract ------------------------------------------------------------------------------------

def test_stages_contract():
    check_stage_contract(gnet.build())


def test_forward_stops_at_deepest_requested_layer(pair, monkeypatch):
    def unreachable(self, x):
        raise AssertionError("an inception block ran although only conv2 was requested")

    monkeypatch.setattr(gnet.Inception, "__call__", unreachable)
    x = mx.zeros((1, *SIZE, 3))
    out = pair.model(x, outputs=["conv2", "conv1"])
    assert set(out) == {"conv1", "conv2"} and out["conv2"].shape == (1, 50, 40, 64)
    with pytest.raises(AssertionError, match="inception block ran"):
        pair.model(x, outputs=["inception3a"])


def test_unknown_layer_lists_valid_names(pair):
    with pytest.raises(models.UnknownLayerError, match="inception4c") as err:
        pair.model(mx.zeros((1, *SIZE, 3)), outputs=["inception4x"])
    assert "Valid layers" in str(err.value) and "inception5b" in str(err.value)


# -- missing weights, no network -----------------------------------------------------------------

def test_missing_weights_without_network_names_the_exporter(weights_dir: Path, monkeypatch, tmp_path):
    check_missing_weights_name_the_exporter(PORT.name, PORT.script, weights_dir, monkeypatch, tmp_path)


def test_exporter_without_network_fails_cleanly(tmp_path):
    check_offline_export_fails(PORT.script, tmp_path)
