"""The PyTorch side: the engine's dream step and octave loop, written compactly in torch (NCHW).

Same maths as ``deepdream.step`` with its defaults (pytorch-deepdream's step): roll by the
jitter, forward to the layers (stopping there), loss = mean over layers of mean(a^2), gradient
w.r.t. the input, roll back, cascade of three Gaussian blurs (kernel 9, sigmas [0.5, 1, 2] *
sigma, reflect padding), zero mean / unit std, ``x += lr * g``, clamp to valid pixels. The
octave loop is the 2015 notebook's: shrink, dream the smallest first, carry the detail up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CASCADE_SIGMAS = (0.5, 1.0, 2.0)
KERNEL_SIZE = 9


class _Stop(Exception):
    """Raised by the last layer's hook: nothing after the deepest requested layer runs."""


class LayerTap:
    """Collects the outputs of some modules during a forward pass and stops it after the last one."""

    def __init__(self, net: nn.Module, modules: Mapping[str, nn.Module]) -> None:
        self.net = net
        self.layers = list(modules)
        self.activations: dict[str, torch.Tensor] = {}
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            self.activations[name] = output
            if len(self.activations) == len(self.layers):
                raise _Stop
        return hook

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.activations = {}
        try:
            self.net(x)
        except _Stop:
            pass
        return self.activations

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def gaussian_taps(sigma: float, size: int = KERNEL_SIZE, device: torch.device | str = "cpu") -> torch.Tensor:
    grid = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(grid * grid) / (2 * sigma * sigma))
    return g / g.sum()


def cascade_smooth(grad: torch.Tensor, sigma: float, size: int = KERNEL_SIZE) -> torch.Tensor:
    """Mean of three separable Gaussian blurs (depthwise convs, reflect-padded)."""
    channels, pad = grad.shape[1], size // 2
    out = torch.zeros_like(grad)
    for coeff in CASCADE_SIGMAS:
        taps = gaussian_taps(sigma * coeff, size, grad.device)
        vertical = taps.view(1, 1, size, 1).repeat(channels, 1, 1, 1)
        horizontal = taps.view(1, 1, 1, size).repeat(channels, 1, 1, 1)
        g = F.conv2d(F.pad(grad, (0, 0, pad, pad), mode="reflect"), vertical, groups=channels)
        g = F.conv2d(F.pad(g, (pad, pad, 0, 0), mode="reflect"), horizontal, groups=channels)
        out = out + g
    return out / len(CASCADE_SIGMAS)


def to_nchw(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) array -> (1, 3, H, W) tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(device)


class TorchDreamStep:
    """``step(state, shift, sigma, lr) -> new state``; state is the ImageNet-normalised image, NCHW.

    ``device``: where the state lives and the step runs (``"cuda"`` for the GPU benchmark); the
    network must already be there.
    """

    def __init__(self, net: nn.Module, modules: Mapping[str, nn.Module],
                 mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
                 step_scale: float = 1.0) -> None:
        self.step_scale = step_scale  # the engine's PixelSpace.step_scale (Caffe's 0-255 input units)
        self.tap = LayerTap(net, modules)
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.low = -self.mean / self.std
        self.high = (1.0 - self.mean) / self.std

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        activations = self.tap(x)
        values = [(a * a).mean() for a in activations.values()]
        return sum(values[1:], values[0]) / len(values)

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.loss(x), x)
        return grad

    @torch.no_grad()
    def __call__(self, state: torch.Tensor, shift: tuple[int, int], sigma: float, lr: float) -> torch.Tensor:
        dy, dx = int(shift[0]), int(shift[1])
        grad = self.gradient(torch.roll(state, shifts=(dy, dx), dims=(2, 3)))
        grad = torch.roll(grad, shifts=(-dy, -dx), dims=(2, 3))
        grad = cascade_smooth(grad, sigma)
        grad = grad - grad.mean()
        grad = grad / (torch.sqrt((grad * grad).mean()) + 1e-8)
        return torch.minimum(torch.maximum(state + (lr * self.step_scale) * grad, self.low), self.high)

    def encode(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) in [0, 1] -> normalised (1, 3, H, W)."""
        x = to_nchw(rgb, self.device)
        return (x - self.mean) / self.std

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        return state * self.std + self.mean

    def synchronize(self) -> None:
        """Wait for the device: CUDA runs asynchronously, so a timer must not stop before it has."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self.tap.remove()


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(x.shape[2:]) == (height, width):
        return x.clone()
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def octave_sizes(height: int, width: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    return [(max(1, round(height / scale ** k)), max(1, round(width / scale ** k)))
            for k in range(octaves - 1, -1, -1)]


@torch.no_grad()
def torch_dream(step: TorchDreamStep, rgb: np.ndarray, *, sizes: list[tuple[int, int]], steps: int,
                lr: float, jitter: int, smoothing: float, rng: np.random.Generator) -> np.ndarray:
    """The 2015 octave loop around ``step``: (H, W, 3) in [0, 1] -> dreamed (H, W, 3).

    ``sizes``: the octaves (height, width), smallest first, e.g. from ``octave_sizes`` (the
    benchmark passes the engine's own list, which drops octaves too small for the model)."""
    base = to_nchw(rgb, step.device)
    detail = torch.zeros(1, 3, *sizes[0], device=step.device)
    result = base
    for height, width in sizes:
        octave_base = _resize(base, height, width)
        state = (torch.clamp(octave_base + _resize(detail, height, width), 0.0, 1.0) - step.mean) / step.std
        for i in range(steps):
            shift = rng.integers(-jitter, jitter + 1, size=2) if jitter else np.zeros(2, np.int64)
            sigma = (i + 1) / steps * 2.0 + smoothing
            state = step(state, (int(shift[0]), int(shift[1])), sigma, lr)
        result = step.decode(state)
        detail = result - octave_base
    return torch.clamp(result, 0.0, 1.0)[0].permute(1, 2, 0).cpu().numpy()
