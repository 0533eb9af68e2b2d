"""fastlayers.roll: the native roll and reflect padding equal deepdream.transforms' MLX forms."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from deepdream import transforms
from fastlayers import native
from fastlayers.roll import roll_pad


@pytest.fixture
def kernels():
    if native.load() is None:
        pytest.skip(f"native kernels unavailable: {native.status}")
    return native.load()


def _image(shape: tuple[int, ...]) -> mx.array:
    return mx.array(np.random.default_rng(0).standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("shape", [(1, 37, 53, 3), (1, 5, 4, 2), (1, 1, 6, 3)], ids=["photo", "small", "one-row"])
@pytest.mark.parametrize("shift", [(0, 0), (7, -5), (-36, 52), (80, 3)])
def test_native_roll_equals_numpys_and_the_mlx_form(kernels, shape: tuple[int, ...], shift: tuple[int, int],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    x = _image(shape)
    start, back = transforms.roll_starts(shape[1], shape[2], shift)
    rolled = mx.compile(transforms.roll)(x, start)          # as the dream step runs it
    expected = np.roll(np.array(x), shift, axis=(1, 2))
    np.testing.assert_array_equal(np.array(rolled), expected)
    np.testing.assert_array_equal(np.array(transforms.roll(rolled, back)), np.array(x))
    monkeypatch.setattr(native, "load", lambda: None)
    np.testing.assert_array_equal(np.array(transforms.roll(x, start)), expected)


def test_native_roll_gradient_is_the_opposite_roll(kernels) -> None:
    x, up = _image((1, 9, 11, 3)), _image((1, 9, 11, 3)) * 0.5
    start, back = transforms.roll_starts(9, 11, (4, -3))
    grad = mx.grad(lambda a: (transforms.roll(a, start) * up).sum())(x)
    np.testing.assert_array_equal(np.array(grad), np.array(transforms.roll(up, back)))


@pytest.mark.parametrize("shape,pad", [((1, 37, 53, 3), 4), ((2, 6, 7, 3), 4), ((1, 3, 2, 3), 4), ((1, 8, 8, 5), 0)],
                         ids=["photo", "batch", "shorter-than-pad", "none"])
def test_native_reflect_padding_equals_the_mlx_form(kernels, shape: tuple[int, ...], pad: int) -> None:
    """A roll by nothing, then torch's reflect padding (a side shorter than the padding repeats its
    last reflected sample, as ``transforms._reflect_pad_axis`` does)."""
    x = _image(shape)
    padded = roll_pad(x, mx.zeros((2,), dtype=mx.int32), pad)
    expected = transforms._reflect_pad_axis(transforms._reflect_pad_axis(x, pad, 1), pad, 2)
    np.testing.assert_array_equal(np.array(padded), np.array(expected))
    # rolled and padded at once: the padding of the rolled image
    start, _ = transforms.roll_starts(shape[1], shape[2], (2, -1))
    both = roll_pad(x, start, pad)
    rolled = np.roll(np.array(x), (2, -1), axis=(1, 2))
    expected = transforms._reflect_pad_axis(transforms._reflect_pad_axis(mx.array(rolled), pad, 1), pad, 2)
    np.testing.assert_array_equal(np.array(both), np.array(expected))
