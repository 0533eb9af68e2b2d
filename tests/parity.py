"""What the model-port tests share: a torchvision reference with random weights, our exporter run
on its checkpoint, and the parity check of activations and input gradients.

A port file declares a ``Port`` (model name, exporter script, how the reference is randomised,
the gradient's anchors, which torch module is each of our stages) and asks ``check_parity``
about the layers it cares for.

Activations and logits: float32, relative error ``rel_err`` (max |ours - torch| / max |torch|)
< 1e-4, both as trained and called (BatchNorms as such) and as the dream step calls the model
(``constant_weights``: BatchNorms folded into their convolutions).

Input gradients: < 1e-3, with torch linearised at OUR forward pass. These networks are piecewise
linear (ReLU, max pool); float32 rounding (~1e-6) puts a few of their millions of ReLU units and
pool windows that sit within 1e-6 of a kink on opposite sides in the two frameworks, and each
such flip moves the input gradient locally by a few percent of its maximum (measured: one flipped
unit of VGG16's conv2_1 made 1.9 % at relu3_3; torch float32 differs as much from torch float64,
and MLX's CPU float64 convolution has float32 accuracy). Both gradients are right, for slightly
different inputs. So for the gradient the torch reference takes the value of every *anchor*
(each module whose output feeds a ReLU: the convs and hidden linears of VGG and AlexNet, the
BatchNorms of ResNet, GoogLeNet and Inception v3) from our model, ``out + (ours - out).detach()``,
after checking that the two agree to 1e-4. Every ReLU then sees the same numbers in both (a
residual sum or a branch concatenation of them too), and so does every max pool, while all
derivatives still come from torch's own modules, and ours from our unmodified model. Measured
errors are ~1e-6 for both checks.
"""

from __future__ import annotations

import io
import os
import runpy
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models
import mlx.core as mx
import mlx.nn as nn

torch = pytest.importorskip("torch")

from fastlayers.batchnorm import constant_weights  # noqa: E402
from convert.torch_weights import export_model, torchvision_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# -- arrays ---------------------------------------------------------------------------------------

def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max|ours - ref| / max|ref|."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def nchw(a: mx.array | np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def nhwc(a: np.ndarray) -> mx.array:
    return mx.array(np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a)


# -- the torchvision reference ---------------------------------------------------------------------

def random_biases(tv: Any) -> None:
    """torchvision initialises every conv/linear bias to zero; random ones make the test see them."""
    for module in tv.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.bias.normal_(0.0, 0.05)


def random_batchnorm(tv: Any) -> None:
    """torchvision initialises BatchNorm as the identity (weight 1, bias 0, mean 0, var 1): all four
    random, so that a mix-up of the running statistics cannot pass."""
    for module in tv.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0.0, 0.1)
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)


def calibrate(model: Any, shape: Sequence[int]) -> Any:
    """Realistic BN statistics (from one random input of ``shape``, as trained weights would have)
    and random BN affine parameters, so a swapped or misnamed BN tensor cannot go unnoticed; eval mode."""
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


def batchnorm_anchors(tv: Any) -> dict[str, str]:
    """Every BatchNorm (each feeds a ReLU), at the same path in both models."""
    return {name: name for name, module in tv.named_modules() if isinstance(module, torch.nn.BatchNorm2d)}


def renamed_anchors(torch_keys: dict[str, str]) -> Callable[[Any], dict[str, str]]:
    """Every conv and linear of a port that renames torchvision's modules (torch path -> ours)."""
    return lambda tv: {ours: theirs for theirs, ours in torch_keys.items()}


def features_stage(layer_names: Sequence[str]) -> Callable[[Any, str], Any]:
    """Our i-th layer is torchvision's ``features[i]`` (VGG and AlexNet: conv, ReLU, pool in step)."""
    return lambda tv, layer: tv.features[list(layer_names).index(layer)]


@dataclass(frozen=True)
class Port:
    """One model port, as its parity tests see it."""

    name: str                                   # registry name: "vgg16"
    script: str                                 # its exporter: "export_vgg.py"
    size: tuple[int, int]                       # input (H, W) of the parity checks
    script_args: tuple[str, ...] = ()           # e.g. ("--model", "vgg19")
    #: randomises the reference in place (under no_grad), after torchvision's own random init
    init: Callable[[Any], Any] | None = None
    #: our module path -> torchvision's, for every module whose output feeds a ReLU
    anchors: Callable[[Any], dict[str, str]] = batchnorm_anchors
    #: the torchvision module whose output is our stage ``layer``
    torch_stage: Callable[[Any, str], Any] = lambda tv, layer: tv.get_submodule(layer)


def reference(port: Port, seed: int = 0) -> Any:
    """torchvision's random-init model (as the exporter builds it), randomised by ``port.init``; eval mode."""
    torch.manual_seed(seed)
    tv = torchvision_model(port.name, pretrained=False)
    if port.init is not None:
        with torch.no_grad():
            port.init(tv)
    return tv.requires_grad_(False).eval()  # only input gradients are compared


# -- exporter scripts -------------------------------------------------------------------------------

def run_script(script: str, *args: str) -> tuple[int, str]:
    """Run an exporter script as its command line does (``__main__``, ``sys.argv``), in this process
    (no second torch import, which takes seconds); return its exit status and stderr."""
    argv, err = sys.argv, io.StringIO()
    sys.argv = [script, *args]
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            runpy.run_path(str(ROOT / script), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return code, err.getvalue()


@dataclass
class Pair:
    """torchvision's model and ours, loaded from the file our exporter script wrote."""

    port: Port
    tv: Any
    model: models.DreamModel
    tmp: Path
    npz: Path | None  # the exported file, when kept for the test module


def pair_fixture(*ports: Port, keep_npz: bool = False):
    """A module-scoped ``pair`` fixture (parametrised when given several ports): the reference, its
    checkpoint through ``port.script``, our model loaded from the result. The checkpoint is deleted
    at once, the exported file too unless ``keep_npz`` (VGG's are 0.5 GB each)."""

    def pair(request, weights_dir, tmp_path_factory) -> Iterator[Pair]:
        port = getattr(request, "param", ports[0])
        tmp = tmp_path_factory.mktemp(port.name)
        tv = reference(port)
        pth, npz = tmp / f"{port.name}.pth", tmp / f"{port.name}.npz"
        torch.save(tv.state_dict(), pth)
        code, err = run_script(port.script, *port.script_args, "--from-pth", str(pth), "--out", str(npz))
        pth.unlink()  # keep it out of pytest's retained temp folders
        assert code == 0, err
        model = models.load_model(port.name, weights=npz)
        if not keep_npz:
            npz.unlink()
        yield Pair(port, tv, model, tmp, npz if keep_npz else None)
        npz.unlink(missing_ok=True)

    params = {"params": ports, "ids": [p.name for p in ports]} if len(ports) > 1 else {}
    return pytest.fixture(scope="module", **params)(pair)


# -- parity -----------------------------------------------------------------------------------------

class _Stop(Exception):
    """Raised by a forward hook once the wanted activation exists: torch need not run further."""


def torch_output(pair: Pair, layer: str, x: Any, anchors: dict[str, np.ndarray] | None = None) -> Any:
    """torchvision's output at ``layer``; ``anchors`` (torch path -> our value) replace module outputs."""
    tv, handles, captured = pair.tv, [], {}

    def anchor(value: np.ndarray):
        def hook(_module, _inputs, output):
            assert rel_err(output.detach().numpy(), value) < 1e-4  # anchoring never hides a real difference
            return output + (torch.from_numpy(value) - output).detach()
        return hook

    def stop(_module, _inputs, output):
        captured["act"] = output
        raise _Stop

    for path, value in (anchors or {}).items():
        handles.append(tv.get_submodule(path).register_forward_hook(anchor(value)))
    if layer != "logits":
        handles.append(pair.port.torch_stage(tv, layer).register_forward_hook(stop))
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
        out = model(nhwc(x), outputs=[layer])[layer]
    finally:
        for path in paths:
            _swap(model, path, lambda recorder: recorder.inner)
    return nchw(out), {p: nchw(v) for p, v in kept.items()}


def check_layer(pair: Pair, layer: str, x: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Assert activation and input-gradient parity at ``layer``; return both relative errors."""
    tv, model = pair.tv, pair.model
    with torch.no_grad():
        ref = torch_output(pair, layer, torch.from_numpy(x)).numpy()
    paths = pair.port.anchors(tv)
    ours, values = ours_outputs(model, layer, x, list(paths))
    assert ours.shape == ref.shape, layer
    assert np.abs(ref).max() > 1e-3, layer  # a meaningful scale for the relative error
    act_err = rel_err(ours, ref)
    assert act_err < 1e-4, (layer, act_err)
    # The dream step's form: weights constant, inference BatchNorms folded into their convolutions.
    with constant_weights():
        folded = model(nhwc(x), outputs=[layer])[layer]
    assert rel_err(nchw(folded), ref) < 1e-4, (layer, "folded")

    w = rng.standard_normal(ref.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    anchors = {paths[p]: v for p, v in values.items()}
    (torch_output(pair, layer, xt, anchors) * torch.from_numpy(w)).sum().backward()
    wm = nhwc(w)
    grad = mx.grad(lambda inp: (model(inp, outputs=[layer])[layer] * wm).sum())(nhwc(x))
    grad_err = rel_err(nchw(grad), xt.grad.numpy())
    assert grad_err < 1e-3, (layer, grad_err)
    return act_err, grad_err


def check_parity(pair: Pair, layers: Sequence[str], seed: int) -> None:
    """``check_layer`` for each of ``layers``, on one random input of the port's size."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 3, *pair.port.size)).astype(np.float32)
    for layer in layers:
        check_layer(pair, layer, x, rng)


def check_min_input_size(pair: Pair, empty_below: str | None = None) -> None:
    """At MIN_INPUT_SIZE our logits are torchvision's (1e-4); one pixel less torchvision fails, and
    our stage ``empty_below`` (when given) is empty."""
    model, size = pair.model, pair.model.MIN_INPUT_SIZE
    x = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    logits = model(nhwc(x))["logits"]
    assert logits.shape == (1, 1000) and bool(mx.isfinite(logits).all())
    with torch.no_grad():
        assert rel_err(np.asarray(logits), pair.tv(torch.from_numpy(x)).numpy()) < 1e-4
        with pytest.raises(RuntimeError):
            pair.tv(torch.zeros(1, 3, size - 1, size - 1))
    if empty_below is not None:
        assert model(mx.zeros((1, size - 1, size - 1, 3)), outputs=[empty_below])[empty_below].size == 0


def check_parameter_stages_are_modules(model: Any, prefixes: tuple[str, ...]) -> None:
    """A stage with parameters (named with one of ``prefixes``, or the logits) is the module itself,
    so training can freeze it; any other stage holds none."""
    for name, fn in model.stages():
        if name.startswith(prefixes) or name == "logits":
            assert isinstance(fn, nn.Module), name
        else:
            assert not isinstance(fn, nn.Module) or not fn.parameters(), name


def check_layer_names(model: Any) -> None:
    """The stages end in the logits and include the layer names, which include the default layers."""
    names = [name for name, _ in model.stages()]
    assert names[-1] == "logits" and set(model.layer_names) <= set(names)
    assert set(model.default_layers) <= set(model.layer_names)


def check_stage_contract(model: Any) -> None:
    """``check_layer_names``; and a stage with parameters must be the module itself, so training can
    freeze it: any other stage is a method of the model (GoogLeNet, Inception v3)."""
    check_layer_names(model)
    for name, fn in model.stages():
        if not isinstance(fn, nn.Module):
            assert getattr(fn, "__self__", None) is model, name


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


def check_wrapped_checkpoint_converts_identically(pair: Pair, extra: dict[str, Any]) -> None:
    """A DataParallel ("module.") checkpoint inside {"state_dict": ...}, with the ``extra`` keys that
    torchvision's raw ImageNet file carries (aux heads), gives the same file as the plain one."""
    state = {**pair.tv.state_dict(), **extra}
    pth = pair.tmp / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pth)
    out = export_model(pair.port.name, out=pair.tmp / "wrapped.npz", from_pth=pth)
    plain, again = np.load(pair.npz), np.load(out)
    arrays = [k for k in plain.files if k != "__metadata__"]
    assert sorted(arrays) == sorted(k for k in again.files if k != "__metadata__")
    for key in arrays:
        np.testing.assert_array_equal(plain[key], again[key])


# -- errors a user meets ----------------------------------------------------------------------------

def check_export_refused(script: str, args: Sequence[str], state_dict: dict[str, Any], tmp_path: Path,
                         message: str) -> None:
    """The exporter refuses ``state_dict`` (saved as the --from-pth file) with a one-line error
    containing ``message``, and writes nothing."""
    pth, out = tmp_path / "other.pth", tmp_path / "refused.npz"
    torch.save(state_dict, pth)
    code, err = run_script(script, *args, "--from-pth", str(pth), "--out", str(out))
    assert code != 0
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


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


def check_missing_weights_name_the_exporter(name: str, script: str, weights_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without weights and without network, load_model's one-line error names the exporter's
    --from-pth way out, and leaves nothing behind."""
    empty = weights_dir / f"{name}_offline"  # our own corner of the shared folder
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("DEEPDREAM_WEIGHTS_DIR", str(empty))
    force_offline(monkeypatch, tmp_path)
    with pytest.raises(models.WeightsError) as err:
        models.load_model(name)
    message = str(err.value)
    assert script in message and "--from-pth" in message and "\n" not in message
    assert list(empty.iterdir()) == []


def check_offline_export_fails(script: str, tmp_path: Path) -> None:
    """The script, run as a user runs it (a fresh process) without network: one error line naming
    --from-pth, no traceback, no file or temporary left behind."""
    out = tmp_path / "offline" / "w.npz"
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, script, "--out", str(out)], cwd=ROOT, env=offline_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "--from-pth" in lines[0] and "Traceback" not in proc.stderr
    assert list(out.parent.iterdir()) == []
