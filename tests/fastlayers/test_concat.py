"""fastlayers.concat: channel concatenation equal to mx.concatenate, forward and gradient, on both CPU paths."""

from __future__ import annotations

import mlx.core as mx
import pytest

from fastlayers.concat import concat_channels


@pytest.mark.parametrize("shape", [(1, 9, 7), (2, 4, 5), (3,)], ids=["image", "batch", "vector"])
def test_matches_mx_concatenate(shape: tuple[int, ...], cpu_kernels: str) -> None:
    mx.random.seed(0)
    parts = [mx.random.normal((*shape, c)) for c in (3, 16, 1, 40)]
    expected = mx.concatenate(parts, axis=-1)
    assert mx.array_equal(concat_channels(parts), expected)
    up = mx.random.normal(expected.shape)
    for argnums in ((0, 1, 2, 3), (1, 3)):          # a block's gradient may skip some parts
        def ours(*a):
            return (concat_channels(list(a)) * up).sum()

        def theirs(*a):
            return (mx.concatenate(list(a), axis=-1) * up).sum()

        got = mx.compile(mx.grad(ours, argnums=argnums))(*parts)
        want = mx.grad(theirs, argnums=argnums)(*parts)
        assert all(mx.array_equal(g, w) for g, w in zip(got, want))


def test_parts_of_a_split_feed_their_own_consumers(cpu_kernels: str) -> None:
    """The gradient through a concatenation whose parts come from one array (an Inception block's
    branches all read its input): each part's gradient reaches the input once."""
    x = mx.random.normal((1, 6, 6, 8))

    def block(a, join):
        return join([a * 2, mx.maximum(a, 0), a[..., :3]])

    up = mx.random.normal((1, 6, 6, 19))
    got = mx.grad(lambda a: (block(a, concat_channels) * up).sum())(x)
    want = mx.grad(lambda a: (block(a, lambda p: mx.concatenate(p, axis=-1)) * up).sum())(x)
    assert mx.allclose(got, want, atol=1e-6)
