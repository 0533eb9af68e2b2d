"""VGG16/VGG19 ports against torchvision with random weights, through our exporter script."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import models  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx

torch = pytest.importorskip("torch")

from models import UnknownLayerError, load_model  # noqa: E402
from models.convert import torchvision_model  # noqa: E402
from models.vgg import feature_keys  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = (96, 128)   # non-square, and pool5 (3x4) must be adaptively pooled up to 7x7
# The layers the product's recipes and defaults dream on, per model.
CHECKED_LAYERS = {"vgg16": ["relu4_2", "relu5_1", "pool5"], "vgg19": ["relu4_2", "relu5_2"]}


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def torch_module(tv, layer: str):
    """The torchvision module whose forward output is our stage ``layer``."""
    depth = 16 if len(feature_keys(16)) == sum(isinstance(m, torch.nn.Conv2d) for m in tv.features) else 19
    conv_index = {mlx_name: int(key.split(".")[1]) for key, mlx_name in feature_keys(depth).items()}
    if layer.startswith("relu"):
        return tv.features[conv_index["conv" + layer[4:]] + 1]
    if layer.startswith("pool"):
        block = int(layer[4:])
        last_conv = max(i for name, i in conv_index.items() if name.startswith(f"conv{block}_"))
        return tv.features[last_conv + 2]
    return tv.features[conv_index[layer]]


class _Stop(Exception):
    pass


def torch_activation_and_grad(tv, layer: str, x: np.ndarray, w: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activation of ``layer`` (forward stopped there by a hook), d(sum(w' * act))/d(input) and w'.

    w' is ``w`` with the units at ReLU's kink (|act| below 1e-4 of the maximum) zeroed: there
    float32 rounding (1e-6) may put a unit on either side of zero in the two frameworks, and
    the gradient of that one unit is then either w or 0, a real but meaningless disagreement.
    """
    xt = torch.tensor(x, requires_grad=True)
    if layer == "logits":
        act = tv(xt)
    else:
        captured = {}

        def hook(module, inputs, output):
            captured["act"] = output
            raise _Stop

        handle = torch_module(tv, layer).register_forward_hook(hook)
        try:
            tv(xt)
        except _Stop:
            pass
        finally:
            handle.remove()
        act = captured["act"]
    act_np = act.detach().numpy().copy()
    w = w * (np.abs(act_np) > 1e-4 * np.abs(act_np).max())
    (act * torch.tensor(w)).sum().backward()
    return act_np, xt.grad.numpy(), w


def ours_activation_and_grad(model, layer: str, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same for our model, with NCHW <-> NHWC at the boundary."""
    to_nhwc = (0, 2, 3, 1) if x.ndim == 4 else None
    xm = mx.array(x.transpose(to_nhwc))
    wm = mx.array(w.transpose(0, 2, 3, 1) if w.ndim == 4 else w)
    act = model(xm, outputs=[layer])[layer]
    grad = mx.grad(lambda inp: (model(inp, outputs=[layer])[layer] * wm).sum())(xm)
    act_np = np.array(act)
    return (act_np.transpose(0, 3, 1, 2) if act_np.ndim == 4 else act_np), np.array(grad).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module", params=["vgg16", "vgg19"])
def pair(request, weights_dir, tmp_path_factory) -> Iterator[tuple[str, object, object]]:
    """(name, torchvision model, our model loaded from the file our exporter wrote)."""
    name = request.param
    torch.manual_seed(0)
    tv = torchvision_model(name, pretrained=False)
    with torch.no_grad():
        # torchvision initialises every bias to zero; random ones make the test see them.
        for module in tv.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.bias.normal_(0.0, 0.05)
    pth = tmp_path_factory.mktemp(name) / f"{name}.pth"
    torch.save(tv.state_dict(), pth)
    out = weights_dir / f"{name}_parity.npz"
    proc = subprocess.run([sys.executable, str(ROOT / "export_vgg.py"), "--model", name, "--from-pth", str(pth),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    pth.unlink()  # 0.5 GB each: do not keep it in pytest's retained temp folders
    assert proc.returncode == 0, proc.stderr
    model = load_model(name, weights=out)
    yield name, tv, model
    out.unlink()


def test_logits_and_input_gradient_match_torchvision(pair) -> None:
    name, tv, model = pair
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, *SIZE)).astype(np.float32)
    w = rng.standard_normal((1, 1000)).astype(np.float32)
    ref, ref_grad, w = torch_activation_and_grad(tv, "logits", x, w)
    ours, grad = ours_activation_and_grad(model, "logits", x, w)
    assert ours.shape == ref.shape == (1, 1000)
    assert np.abs(ref).max() > 1e-3  # a meaningful scale for the relative error
    assert rel_err(ours, ref) < 1e-4
    assert rel_err(grad, ref_grad) < 1e-3


def test_dream_layers_match_torchvision(pair) -> None:
    name, tv, model = pair
    layers = sorted(set(CHECKED_LAYERS[name]) | set(model.default_layers))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, *SIZE)).astype(np.float32)
    for layer in layers:
        out_shape = model(mx.array(x.transpose(0, 2, 3, 1)), outputs=[layer])[layer].shape
        w = rng.standard_normal((out_shape[0], out_shape[3], out_shape[1], out_shape[2])).astype(np.float32)
        ref, ref_grad, w = torch_activation_and_grad(tv, layer, x, w)
        ours, grad = ours_activation_and_grad(model, layer, x, w)
        assert ours.shape == ref.shape, layer
        assert rel_err(ours, ref) < 1e-4, layer
        assert rel_err(grad, ref_grad) < 1e-3, layer


def test_layer_names_and_errors(pair) -> None:
    name, _, model = pair
    last = "relu5_3" if name == "vgg16" else "relu5_4"
    assert model.layer_names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert model.layer_names[-2:] == [last, "pool5"]
    assert [n for n, _ in model.stages()][-1] == "logits"
    x = mx.zeros((1, 64, 64, 3))
    with pytest.raises(UnknownLayerError, match=f"Did you mean 'relu4_2'.*{last}"):
        model(x, outputs=["relu4-2"])
    with pytest.raises(UnknownLayerError):
        model.check_layers(["inception4c"])


def test_forward_stops_at_the_deepest_requested_layer(pair) -> None:
    _, _, model = pair
    ran: list[str] = []
    stages = model.stages

    def recording_stages():
        return [(n, (lambda f, n: lambda x: (ran.append(n), f(x))[1])(f, n)) for n, f in stages()]

    model.stages = recording_stages
    try:
        # 8 px: deeper stages would fail (pool4 of 8 px is empty), so stopping is required.
        out = model(mx.zeros((1, 8, 8, 3)), outputs=["relu1_2", "conv2_1"])
    finally:
        del model.stages
    assert set(out) == {"relu1_2", "conv2_1"}
    assert ran == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1"]


def test_parameter_stages_are_modules(pair) -> None:
    _, _, model = pair
    import mlx.nn as nn

    for name, fn in model.stages():
        if name.startswith(("conv", "fc")) or name == "logits":
            assert isinstance(fn, nn.Module), name


def test_min_input_size(pair) -> None:
    name, tv, model = pair
    size = model.MIN_INPUT_SIZE
    logits = model(mx.zeros((1, size, size, 3)))["logits"]
    assert logits.shape == (1, 1000) and bool(mx.isfinite(logits).all())
    with torch.no_grad(), pytest.raises(RuntimeError):  # one pixel less: torchvision fails too
        tv(torch.zeros(1, 3, size - 1, size - 1))


def test_exporter_rejects_the_other_depth(pair, tmp_path) -> None:
    name, tv, _ = pair
    if name != "vgg16":
        pytest.skip("one direction is enough")
    pth = tmp_path / "small.pth"
    # A VGG16 state dict, features only (cheap to write): the exporter must refuse it as vgg19.
    torch.save({k: v for k, v in tv.state_dict().items() if k.startswith("features.")}, pth)
    out = tmp_path / "vgg19.npz"
    proc = subprocess.run([sys.executable, str(ROOT / "export_vgg.py"), "--model", "vgg19", "--from-pth", str(pth),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert not out.exists()
