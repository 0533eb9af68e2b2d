"""The GPU computes what the CPU computes: one dream step and one training step on each, same
weights, same input. Skipped where MLX has no GPU (CI, and every machine without MLX's CUDA or
Metal backend); on such a machine only the device selection's own errors are checked."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

import models
from deepdream import device
from deepdream.errors import DreamError
from deepdream.objectives import build_objective
from deepdream.step import make_step
from deepdream.training import make_train_step

needs_gpu = pytest.mark.skipif(not device.gpu_available(),
                               reason="MLX sees no GPU here (install requirements-cuda.txt on an NVIDIA machine)")

#: Models that cover every kind of layer the zoo has: plain and strided convolutions, pooling
#: with ceil rounding, BatchNorm folded into its convolution, depthwise convolutions.
STEP_MODELS = ("alexnet", "googlenet", "efficientnet_lite0")

#: How far the GPU's float32 result may sit from the CPU's. Not float32 rounding alone: the
#: GPU's float32 convolutions (cuDNN) may run on tensor cores in TF32, whose 10-bit mantissa
#: errors grow through a deep random-weight network and its gradient, as they do for PyTorch
#: on the same card (docs/performance.md has the measured differences of both). A wrong
#: operation (layout, padding, a missing gradient term) moves the update by order 1.
UPDATE_TOLERANCE = 0.15
LOSS_TOLERANCE = 1e-2


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture
def restore_device() -> Iterator[None]:
    before = mx.default_device()
    yield
    mx.set_default_device(before)


def on_each_device(run: Callable[[], dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """``run``'s results with the CPU, then the GPU, as MLX's default device."""
    results = {}
    for name in ("cpu", "gpu"):
        device.use(name)
        results[name] = run()
    return results


def test_unknown_device_is_a_one_line_error(restore_device: None) -> None:
    with pytest.raises(DreamError, match="unknown device 'tpu'"):
        device.use("tpu")


@pytest.mark.skipif(device.gpu_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_says_how_to_get_one(restore_device: None) -> None:
    with pytest.raises(DreamError, match="requirements-cuda.txt"):
        device.use("gpu")
    assert "device: cpu" in device.description()


@needs_gpu
@pytest.mark.parametrize("name", STEP_MODELS)
def test_dream_step_matches_the_cpu(name: str, restore_device: None) -> None:
    model = models.build_model(name)
    model.eval()
    mx.eval(model.parameters())
    rgb = np.random.default_rng(0).random((96, 128, 3), dtype=np.float32)   # odd aspect: ceil pooling

    def one_step() -> dict[str, np.ndarray]:
        step = make_step(model, build_objective(model, model.default_layers))
        state = step.space.encode(rgb)
        new, loss = step(state, (5, -3), 0.7, 0.09)
        return {"delta": np.array(new - state), "loss": np.array(loss)}

    results = on_each_device(one_step)
    diff = relative(results["gpu"]["delta"], results["cpu"]["delta"])
    print(f"{name}: dream step GPU vs CPU, relative L2 of the update {diff:.1e}")
    assert np.abs(results["cpu"]["delta"]).max() > 0
    assert diff < UPDATE_TOLERANCE
    assert relative(results["gpu"]["loss"], results["cpu"]["loss"]) < LOSS_TOLERANCE


@needs_gpu
def test_training_step_matches_the_cpu(restore_device: None) -> None:
    base = models.build_model("efficientnet_lite0", num_classes=3)
    start = dict(tree_flatten(base.parameters()))
    x = mx.array(np.random.default_rng(1).standard_normal((4, 96, 96, 3)).astype(np.float32))
    y = mx.array([0, 1, 2, 1])

    def one_step() -> dict[str, np.ndarray]:
        model = models.build_model("efficientnet_lite0", num_classes=3)
        model.load_weights(list(start.items()))
        model.train()
        optimizer = optim.SGD(learning_rate=0.05, momentum=0.9)
        optimizer.init(model.trainable_parameters())
        mx.random.seed(0)                  # the same dropout mask on both devices
        step = make_train_step(model, optimizer, aux_weight=0.0, use_aux=False)
        loss, _ = step(x, y)
        mx.eval(loss, model.parameters())
        return {"loss": np.array(loss), **{k: np.array(v) for k, v in tree_flatten(model.parameters())}}

    results = on_each_device(one_step)
    cpu, gpu = results["cpu"], results["gpu"]
    print(f"training step GPU vs CPU: loss {float(gpu['loss']):.6f} vs {float(cpu['loss']):.6f}")
    assert relative(gpu["loss"], cpu["loss"]) < LOSS_TOLERANCE
    # The update of all parameters together, not one by one: some biases' gradients are all but
    # zero (a training-mode BatchNorm downstream removes any constant shift, except at the image
    # borders), so each device's value there is rounding noise and their ratio means nothing.
    before = {k: np.array(v) for k, v in start.items()}
    cpu_update = np.concatenate([(cpu[k] - before[k]).ravel() for k in before])
    gpu_update = np.concatenate([(gpu[k] - before[k]).ravel() for k in before])
    assert np.abs(cpu_update).max() > 0, "the step changed no parameter"
    diff = relative(gpu_update, cpu_update)
    print(f"training step GPU vs CPU: relative L2 of the parameter update {diff:.1e}")
    assert diff < UPDATE_TOLERANCE
