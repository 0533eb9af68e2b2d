"""ResNet50 port against torchvision with random weights, through our exporter script.

Activations and logits: float32, relative error (max |ours - torch| / max |torch|) < 1e-4.
Input gradients: < 1e-3, with torch linearised at OUR forward pass: float32 rounding can put a
ReLU unit or max-pool window that sits within 1e-6 of a kink on opposite sides in the two
frameworks, which moves the input gradient locally by a few percent although both are right.
The torch reference therefore takes every BatchNorm output's value from our model
(``out + (ours - out).detach()``, after checking they agree to 1e-4): each ReLU then sees the
same numbers in both (the residual sum included), while every derivative still comes from
torch's own modules.

torchvision initialises BatchNorm as the identity (weight 1, bias 0, mean 0, var 1); the test
randomises all four so that a mix-up of the running statistics cannot pass.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn

torch = pytest.importorskip("torch")

from models import UnknownLayerError, load_model  # noqa: E402
from models.convert import export_main, torchvision_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = (96, 128)   # non-square; layer4 is 3x4
# The recipe layers (resnet50 --layers layer3_2 layer3_5), the stem's padded max pool and the
# first, strided block of layer2 (projection shortcut); the defaults are added in the test.
CHECKED_LAYERS = ["maxpool", "layer2_0", "layer3_2", "layer3_5"]


def torch_paths(tv: Any) -> dict[str, str]:
    """Our module path -> torchvision's for every BatchNorm (the gradient's anchors): the same."""
    return {name: name for name, module in tv.named_modules() if isinstance(module, torch.nn.BatchNorm2d)}


def torch_module(tv: Any, layer: str) -> Any:
    """The torchvision module whose output is our stage ``layer`` (None: the logits)."""
    if layer == "logits":
        return None
    if layer.startswith("layer"):
        stage, block = layer.split("_")
        return getattr(tv, stage)[int(block)]
    return getattr(tv, layer)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _nchw(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


class _Stop(Exception):
    """Raised by a forward hook once the wanted activation exists: torch need not run further."""


def torch_output(tv: Any, layer: str, x: Any, anchors: dict[str, np.ndarray] | None = None) -> Any:
    """torchvision's output at ``layer``; ``anchors`` (torch path -> our value) replace module outputs."""
    handles = []

    def anchor(value: np.ndarray):
        def hook(_module, _inputs, output):
            assert rel_err(output.detach().numpy(), value) < 1e-4  # anchoring never hides a real difference
            return output + (torch.from_numpy(value) - output).detach()
        return hook

    for path, value in (anchors or {}).items():
        handles.append(tv.get_submodule(path).register_forward_hook(anchor(value)))
    captured = {}

    def stop(_module, _inputs, output):
        captured["act"] = output
        raise _Stop

    module = torch_module(tv, layer)
    if module is not None:
        handles.append(module.register_forward_hook(stop))
    try:
        captured["act"] = tv(x)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured["act"]


class _Recorder(nn.Module):
    """Stands in for one of our submodules during a forward pass and hands its output to ``keep``."""

    def __init__(self, inner: nn.Module, keep: Callable[[mx.array], None]) -> None:
        super().__init__()
        self.inner = inner
        self.keep = keep

    def __call__(self, x: mx.array) -> mx.array:
        y = self.inner(x)
        self.keep(y)
        return y


def _swap(model: nn.Module, path: str, make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace the submodule at a dotted path (``layer1.0.downsample.1``) by ``make(it)``."""
    *parents, last = path.split(".")
    parent: Any = model
    for part in parents:
        parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
    if last.isdigit():
        parent[int(last)] = make(parent[int(last)])
    else:
        setattr(parent, last, make(getattr(parent, last)))


def ours_outputs(model: Any, layer: str, x: np.ndarray, paths: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Our activation at ``layer`` and the outputs (NCHW) of the submodules at ``paths`` that ran."""
    kept: dict[str, mx.array] = {}
    for path in paths:
        _swap(model, path, lambda m, path=path: _Recorder(m, lambda y: kept.__setitem__(path, y)))
    try:
        out = model(mx.array(_nhwc(x)), outputs=[layer])[layer]
    finally:
        for path in paths:
            _swap(model, path, lambda recorder: recorder.inner)
    return _nchw(np.array(out)), {p: _nchw(np.array(v)) for p, v in kept.items()}


def check_layer(pair: dict[str, Any], layer: str, x: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Assert activation and input-gradient parity at ``layer``; return both relative errors."""
    tv, model = pair["tv"], pair["model"]
    with torch.no_grad():
        ref = torch_output(tv, layer, torch.from_numpy(x)).numpy()
    paths = torch_paths(tv)
    ours, values = ours_outputs(model, layer, x, list(paths))
    assert ours.shape == ref.shape, layer
    assert np.abs(ref).max() > 1e-3, layer  # a meaningful scale for the relative error
    act_err = rel_err(ours, ref)
    assert act_err < 1e-4, layer

    w = rng.standard_normal(ref.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    anchors = {paths[p]: v for p, v in values.items()}
    (torch_output(tv, layer, xt, anchors) * torch.from_numpy(w)).sum().backward()
    wm = mx.array(_nhwc(w))
    grad = mx.grad(lambda inp: (model(inp, outputs=[layer])[layer] * wm).sum())(mx.array(_nhwc(x)))
    grad_err = rel_err(_nchw(np.array(grad)), xt.grad.numpy())
    assert grad_err < 1e-3, layer
    return act_err, grad_err


def recorded_stage_names(model: Any, x: mx.array, outputs: list[str]) -> tuple[dict[str, mx.array], list[str]]:
    """Run ``model(x, outputs)`` and list the stages that actually ran."""
    ran: list[str] = []
    stages = model.stages

    def recording_stages():
        return [(n, (lambda f, n: lambda t: (ran.append(n), f(t))[1])(f, n)) for n, f in stages()]

    model.stages = recording_stages
    try:
        out = model(x, outputs=outputs)
    finally:
        del model.stages
    return out, ran


@pytest.fixture(scope="module")
def pair(weights_dir, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """torchvision's model and ours, loaded from the file our exporter script wrote."""
    torch.manual_seed(0)
    tv = torchvision_model("resnet50", pretrained=False)
    with torch.no_grad():
        for module in tv.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    tv.requires_grad_(False)  # only input gradients are compared
    pth = tmp_path_factory.mktemp("resnet50") / "resnet50.pth"
    torch.save(tv.state_dict(), pth)
    out = weights_dir / "resnet50_parity.npz"
    proc = subprocess.run([sys.executable, str(ROOT / "export_resnet.py"), "--from-pth", str(pth), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    pth.unlink()  # 0.1 GB: keep it out of pytest's retained temp folders
    assert proc.returncode == 0, proc.stderr
    model = load_model("resnet50", weights=out)
    out.unlink()
    yield {"tv": tv, "model": model}


def test_weights_keep_torchvision_keys(pair) -> None:
    from mlx.utils import tree_flatten

    ours = dict(tree_flatten(pair["model"].parameters()))
    theirs = {k: v for k, v in pair["tv"].state_dict().items() if not k.endswith("num_batches_tracked")}
    assert ours.keys() == theirs.keys()
    assert "layer1.0.downsample.0.weight" in ours and "layer1.1.downsample.0.weight" not in ours
    assert ours["layer2.0.conv2.weight"].shape == (128, 3, 3, 128)  # OHWI
    np.testing.assert_array_equal(np.array(ours["layer3.4.bn2.running_var"]),
                                  theirs["layer3.4.bn2.running_var"].numpy())


def test_logits_and_input_gradient_match_torchvision(pair) -> None:
    rng = np.random.default_rng(1)
    check_layer(pair, "logits", rng.standard_normal((1, 3, *SIZE)).astype(np.float32), rng)


def test_dream_layers_match_torchvision(pair) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, *SIZE)).astype(np.float32)
    for layer in sorted({*CHECKED_LAYERS, *pair["model"].default_layers}):
        check_layer(pair, layer, x, rng)


def test_layer_names_and_errors(pair) -> None:
    model = pair["model"]
    names = model.layer_names
    assert names[:5] == ["conv1", "bn1", "relu", "maxpool", "layer1_0"]
    assert names[-1] == "layer4_2" and len(names) == 4 + 3 + 4 + 6 + 3
    assert [n for n, _ in model.stages()][-1] == "logits"
    assert set(model.default_layers) <= set(names)
    with pytest.raises(UnknownLayerError, match="Did you mean 'layer3_5'.*layer4_2"):
        model(mx.zeros((1, 64, 64, 3)), outputs=["layer3.5"])
    with pytest.raises(UnknownLayerError, match="layer1_0"):
        model.check_layers(["layer3_6"])


def test_forward_stops_at_the_deepest_requested_layer(pair) -> None:
    out, ran = recorded_stage_names(pair["model"], mx.zeros((1, 64, 64, 3)), ["layer1_0", "bn1"])
    assert set(out) == {"layer1_0", "bn1"}
    assert ran == ["conv1", "bn1", "relu", "maxpool", "layer1_0"]


def test_parameter_stages_are_modules(pair) -> None:
    for name, fn in pair["model"].stages():
        if name.startswith(("conv", "bn", "layer")) or name == "logits":
            assert isinstance(fn, nn.Module), name
        else:
            assert not isinstance(fn, nn.Module) or not fn.parameters(), name


def test_min_input_size(pair) -> None:
    model, size = pair["model"], pair["model"].MIN_INPUT_SIZE
    out = model(mx.zeros((1, size, size, 3)), outputs=["layer4_2", "logits"])
    assert out["layer4_2"].shape == (1, 1, 1, 2048)  # the smallest size that still has a full layer4 cell
    assert out["logits"].shape == (1, 1000) and bool(mx.isfinite(out["logits"]).all())


def test_exporter_refuses_another_architecture(tmp_path, capsys) -> None:
    pth = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, pth)
    out = tmp_path / "resnet50.npz"
    with pytest.raises(SystemExit) as exc:
        export_main("resnet50", argv=["--from-pth", str(pth), "--out", str(out)])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a resnet50 state dict" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
