"""The CPU speed machinery the zoo's architectures are built from.

``conv`` and ``pooling`` (convolution and pooling with torchvision's semantics, dispatched to
the native kernels or their pure-MLX forms; ``windows`` holds what they share), ``batchnorm``
(inference BatchNorm and its folding into the convolution before it), ``depthwise`` (the
depthwise convolution), ``native`` (the C++ kernels, built on first use) and ``_blas`` (the
fast BLAS under MLX on Linux).

Importing this package first puts that BLAS into the process: it must happen before
``mlx.core`` is imported anywhere, which is why ``models`` imports it before anything else.
"""

from ._blas import ensure_fast_blas

ensure_fast_blas()  # must run before mlx.core is imported anywhere

__all__ = ["ensure_fast_blas"]
