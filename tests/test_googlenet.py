"""GoogLeNet port: parity with torchvision (random weights), exporter CLI, layer contract, errors.

The reference is torchvision's GoogLeNet with random weights whose BatchNorm statistics are
calibrated on random input (as trained weights would be) and whose BN affine parameters are
random, so that a swapped or misnamed BN tensor cannot go unnoticed.

Input gradients: these networks are piecewise linear (ReLU, max pool), and in float32 a few of
the millions of decisions per image (a max-pool window with two candidates within ~1e-6, a
pre-ReLU value within ~1e-6 of zero) fall differently in torch and MLX, which round
differently. Both results are valid (sub)gradients, yet they then differ by ~1e-2 (torch
float32 differs as much from torch float64). The gradient comparison therefore replays torch's
decisions inside our model (``TorchDecisions``, which also checks that they are ours up to
rounding) and holds the rest of the backward pass to 1e-3; our own max-pool and ReLU backward
passes are compared to torch's separately, on inputs without near-ties.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

import models
import mlx.core as mx
import mlx.nn as nn

torch = pytest.importorskip("torch")

from models import googlenet as gnet  # noqa: E402
from models.convert import export_model, torchvision_model  # noqa: E402
from models.layers import max_pool2d  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAME = "googlenet"
EXPORTER = "export_googlenet.py"
INPUT_SHAPE = (1, 3, 200, 160)  # NCHW, non-square on purpose


# -- helpers (test_inception_v3.py uses them too) ------------------------------------------------

def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max|ours - ref| / max|ref|."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def nchw(a: mx.array | np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def nhwc(a: np.ndarray) -> mx.array:
    return mx.array(np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a)


def calibrated_reference(name: str, shape: Sequence[int], seed: int):
    """torchvision's random-init model (as the exporter builds it), calibrated."""
    torch.manual_seed(seed)
    return calibrate(torchvision_model(name, pretrained=False), shape)


def calibrate(model, shape: Sequence[int]):
    """Realistic BN statistics (from one random image) and random BN affine parameters, in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one pass sets the statistics of that batch
    model.train()
    with torch.no_grad():
        model(torch.randn(1, *shape[1:]))
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
    return model.eval()


class TorchDecisions:
    """Record torch's piecewise-linear decisions; make our model replay them.

    Decisions are the window argmax of every max pool and the sign of every pre-ReLU value
    (each BatchNorm here feeds a ReLU). torch's pools all go through
    ``torch.nn.functional.max_pool2d`` (nn.MaxPool2d and Inception v3's functional calls), its
    pre-ReLU values are the BatchNorm outputs; ours are the name ``max_pool2d`` in
    ``arch_modules`` and ``BasicConv2d``'s BatchNorm. Both models run them in the same order,
    which every replayed step checks (shapes, and that torch's choice is ours up to rounding).
    Call ``record()`` before a torch forward and ``replay()`` before the MLX forward that
    should take the same decisions.
    """

    def __init__(self, torch_model, arch_modules: Sequence[ModuleType]) -> None:
        import torch.nn.functional as F

        self._F = F
        self._torch_pool = F.max_pool2d
        self._torch_model = torch_model
        self._modules = list(arch_modules)
        self._hooks: list = []
        self._pools: list[np.ndarray] = []
        self._signs: list[np.ndarray] = []
        self._cursor = {"pool": 0, "relu": 0}

    def record(self) -> None:
        self._pools.clear()
        self._signs.clear()

    def replay(self) -> None:
        self._cursor = {"pool": 0, "relu": 0}

    def _next(self, kind: str) -> np.ndarray:
        store = self._pools if kind == "pool" else self._signs
        item = store[self._cursor[kind]]
        self._cursor[kind] += 1
        return item

    # torch side
    def _recording_pool(self, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        return_indices=False):
        out, idx = self._torch_pool(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                                    return_indices=True)
        self._pools.append(idx.numpy())
        return (out, idx) if return_indices else out

    def _record_sign(self, module, inputs, output) -> None:
        self._signs.append((output > 0).numpy())  # before torch's in-place ReLU overwrites it

    # our side
    def _replaying_pool(self, x: mx.array, kernel_size, stride=None, padding=0,
                        ceil_mode: bool = False) -> mx.array:
        real = max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)
        idx = self._next("pool")  # (N, C, oh, ow): flat indices into H*W
        n, h, w, c = x.shape
        assert idx.shape == (n, c, real.shape[1], real.shape[2]), "torch and MLX pools out of step"
        flat_idx = mx.array(np.ascontiguousarray(idx.transpose(0, 2, 3, 1)).reshape(n, -1, c))
        out = mx.take_along_axis(x.reshape(n, h * w, c), flat_idx, axis=1).reshape(real.shape)
        assert float(mx.abs(out - real).max()) <= 1e-5 * max(float(mx.abs(real).max()), 1e-12), \
            "a torch max-pool choice is no maximum of our pool's input: the forward passes differ"
        return out

    def _replaying_basic_conv(self, block: gnet.BasicConv2d, x: mx.array) -> mx.array:
        y = block.bn(block.conv(x))
        positive = nhwc(self._next("relu"))
        assert positive.shape == y.shape, "torch and MLX ReLUs out of step"
        differ = mx.where((y > 0) != positive, mx.abs(y), 0.0)
        assert float(differ.max()) <= 1e-4 * max(float(mx.abs(y).max()), 1e-12), \
            "torch's ReLU signs differ from ours beyond rounding: the forward passes differ"
        return y * positive  # the ReLU, with torch's mask: same gradient as torch's ReLU

    def __enter__(self) -> "TorchDecisions":
        self._F.max_pool2d = self._recording_pool
        self._hooks = [m.register_forward_hook(self._record_sign) for m in self._torch_model.modules()
                       if isinstance(m, torch.nn.BatchNorm2d)]
        for module in self._modules:
            module.max_pool2d = self._replaying_pool
        gnet.BasicConv2d.__call__ = lambda block, x: self._replaying_basic_conv(block, x)
        return self

    def __exit__(self, *exc: object) -> None:
        self._F.max_pool2d = self._torch_pool
        for hook in self._hooks:
            hook.remove()
        for module in self._modules:
            module.max_pool2d = max_pool2d
        gnet.BasicConv2d.__call__ = _BASIC_CONV_CALL


_BASIC_CONV_CALL = gnet.BasicConv2d.__call__


def torch_output_and_grad(model, layer: str, x: np.ndarray,
                          seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's activation of ``layer`` ("logits": the output) and the input gradient of
    sum(w * activation) for a random ``w``; returns (activation, w, gradient)."""
    captured = {}
    xt = torch.from_numpy(x).requires_grad_(True)
    hook = None
    if layer != "logits":
        hook = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        out = model(xt)
    finally:
        if hook is not None:
            hook.remove()
    act = captured.get("a", out)
    weight = torch.randn(act.shape, generator=torch.Generator().manual_seed(seed))
    (weight * act).sum().backward()
    return act.detach().numpy(), weight.numpy(), xt.grad.numpy()


def mlx_input_grad(model: models.DreamModel, layer: str, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    w = nhwc(weight)
    grad = mx.grad(lambda z: (model(z, outputs=[layer])[layer] * w).sum())(nhwc(x))
    return nchw(grad)


def check_parity(ours: models.DreamModel, ref, arch_modules: Sequence[ModuleType], layers: Sequence[str],
                 x: np.ndarray) -> dict[str, tuple[float, float]]:
    """(activation error, input-gradient error) per layer. Activations come from our model as it
    is; gradients with torch's decisions replayed (see the module docstring)."""
    errors = {}
    acts = ours(nhwc(x), outputs=list(layers))
    with TorchDecisions(ref, arch_modules) as decisions:
        for i, layer in enumerate(layers):
            decisions.record()
            ref_act, weight, ref_grad = torch_output_and_grad(ref, layer, x, seed=100 + i)
            decisions.replay()
            grad = mlx_input_grad(ours, layer, x, weight)
            errors[layer] = (rel_err(nchw(acts[layer]), ref_act), rel_err(grad, ref_grad))
    return errors


def offline_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a child process that cannot download (unreachable proxy, empty torch cache)."""
    env = dict(os.environ)
    for key in ("no_proxy", "NO_PROXY"):
        env.pop(key, None)
    dead = "http://127.0.0.1:9"  # the discard port: connection refused at once
    env.update(https_proxy=dead, HTTPS_PROXY=dead, http_proxy=dead, HTTP_PROXY=dead,
               TORCH_HOME=str(tmp_path / "torch_home"))
    return env


def force_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same, in this process: urllib builds its opener (and reads proxies) on first use."""
    for key, value in offline_env(tmp_path).items():
        if key.lower().endswith("proxy") or key == "TORCH_HOME":
            monkeypatch.setenv(key, value)
    for key in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)


def run_exporter(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def assert_offline_export_fails(script: str, tmp_path: Path) -> None:
    out = tmp_path / "offline" / "w.npz"
    out.parent.mkdir()
    proc = run_exporter(script, "--out", str(out), env=offline_env(tmp_path))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "--from-pth" in lines[0] and "Traceback" not in proc.stderr
    assert list(out.parent.iterdir()) == []  # no file, no temporary left behind


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> SimpleNamespace:
    """Reference model, its checkpoint, our exporter run on it (CLI), and our loaded model."""
    tmp = tmp_path_factory.mktemp("googlenet")
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
    assert not any(k.startswith(("aux1", "aux2")) for k in np.load(setup.npz).files)


def test_logits_and_default_layers_match_torchvision(setup):
    layers = [*gnet.GoogLeNet.DEFAULT_LAYERS, "logits"]
    errors = check_parity(setup.ours, setup.ref, [gnet], layers, setup.x)
    for layer, (act_err, grad_err) in errors.items():
        assert act_err < 1e-4, (layer, act_err)
        assert grad_err < 1e-3, (layer, grad_err)


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
    """Conv + BN + ReLU with the real ReLU (the parity test replays torch's ReLU masks)."""
    from torchvision.models.googlenet import BasicConv2d as TorchBasicConv2d

    torch.manual_seed(4)
    ref = calibrate(TorchBasicConv2d(6, 8, kernel_size=3, padding=1), (1, 6, 9, 7))
    block = gnet.BasicConv2d(6, 8, kernel_size=3, padding=1)
    block.load_weights([(k, mx.array(v)) for k, v in gnet.convert_torch_state_dict(ref.state_dict()).items()])
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


def test_wrapped_checkpoint_converts_identically(setup):
    """A DataParallel ("module.") checkpoint inside {"state_dict": ...}, with aux-head keys,
    gives the same file."""
    state = dict(setup.ref.state_dict())
    state["aux1.fc2.bias"] = torch.zeros(1000)  # torchvision's raw ImageNet file carries aux heads
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    pth = setup.tmp / "wrapped.pth"
    torch.save(wrapped, pth)
    out = export_model(NAME, out=setup.tmp / "wrapped.npz", from_pth=pth)
    plain, again = np.load(setup.npz), np.load(out)
    arrays = [k for k in plain.files if k != "__metadata__"]
    assert sorted(arrays) == sorted(k for k in again.files if k != "__metadata__")
    for key in arrays:
        np.testing.assert_array_equal(plain[key], again[key])


def test_smallest_input(setup):
    """MIN_INPUT_SIZE is where torchvision still runs, and we agree with it there."""
    size = gnet.GoogLeNet.MIN_INPUT_SIZE
    x = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = setup.ref(torch.from_numpy(x)).numpy()
        with pytest.raises(RuntimeError):
            setup.ref(torch.zeros(1, 3, size - 1, size - 1))
    assert rel_err(np.asarray(setup.ours(nhwc(x))["logits"]), ref) < 1e-4


# -- aux heads -----------------------------------------------------------------------------------

def test_aux_heads_match_torchvision():
    import torchvision

    torch.manual_seed(3)
    ref = calibrate(torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True,
                                                 init_weights=True), (1, 3, 112, 96))
    ours = gnet.build(aux_logits=True)
    ours.load_weights([(k, mx.array(v)) for k, v in
                       gnet.convert_torch_state_dict(ref.state_dict(), keep_aux=True).items()], strict=True)
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
    model = gnet.build()
    names = [name for name, _ in model.stages()]
    assert names[-1] == "logits" and set(model.LAYER_NAMES) <= set(names)
    assert set(model.DEFAULT_LAYERS) <= set(model.LAYER_NAMES)
    for name, fn in model.stages():
        # a stage with parameters must be the module itself, so training can freeze it
        if not isinstance(fn, nn.Module):
            assert getattr(fn, "__self__", None) is model, name


def test_forward_stops_at_deepest_requested_layer(setup, monkeypatch):
    def unreachable(self, x):
        raise AssertionError("an inception block ran although only conv2 was requested")

    monkeypatch.setattr(gnet.Inception, "__call__", unreachable)
    out = setup.ours(nhwc(setup.x), outputs=["conv2", "conv1"])
    assert set(out) == {"conv1", "conv2"} and out["conv2"].shape == (1, 50, 40, 64)
    with pytest.raises(AssertionError, match="inception block ran"):
        setup.ours(nhwc(setup.x), outputs=["inception3a"])


def test_unknown_layer_lists_valid_names(setup):
    with pytest.raises(models.UnknownLayerError, match="inception4c") as err:
        setup.ours(nhwc(setup.x), outputs=["inception4x"])
    assert "Valid layers" in str(err.value) and "inception5b" in str(err.value)


# -- missing weights, no network -----------------------------------------------------------------

def test_missing_weights_without_network_names_the_exporter(weights_dir, monkeypatch, tmp_path):
    empty = weights_dir / "googlenet_offline"  # our own corner of the shared folder
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
