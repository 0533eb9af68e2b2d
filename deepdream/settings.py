"""What shapes a dream, as plain values: ``DreamSettings``, the one home of the dream's defaults
and of the checks on their values. The command line resolves its flags into it
(``deepdream.cli.settings``); every field is one flag of the same name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from .errors import DreamError

GRAD_NORMS = ("std", "mean-abs")


@dataclass(frozen=True)
class DreamSettings:
    """Everything that shapes a dream, as plain values (what the command line resolves to).

    The field defaults are the generic settings (pytorch-deepdream's), used where neither a flag,
    a preset nor the model's recipe gives a value: the one home of the dream's defaults.

    ``layers=None`` means the model's default layers. ``decorrelate`` is ``"imagenet"``,
    ``"model"`` (the matrix in the weights file's metadata) or the path of a 3x3 ``.npy``.
    ``tile_size=None`` tiles when the memory budget asks for it (``max_memory`` bytes, None: the
    machine's default, ``memory.default_budget``), ``0`` never, a size always.
    """

    layers: tuple[str, ...] | None = None
    channels: tuple[int, ...] | None = None
    guide: str | None = None
    octaves: int = 4
    scale: float = 1.8
    steps: int = 10
    lr: float = 0.09
    jitter: int = 32
    smoothing: float = 0.5
    smooth: bool = True
    lap_norm: bool = False
    grad_norm: str = "std"
    tile_size: int | None = None
    max_memory: int | None = None
    seed: int | None = None
    decorrelate: str | None = None

    def validate(self) -> None:
        """Raise DreamError for values no dream can use."""
        if self.octaves < 1:
            raise DreamError(f"--octaves must be at least 1 (got {self.octaves})")
        if self.steps < 1:
            raise DreamError(f"--steps must be at least 1 (got {self.steps})")
        if not self.scale > 0 or not np.isfinite(self.scale):
            raise DreamError(f"--scale must be a positive number (got {self.scale}); 1.3-2 is typical")
        if self.octaves > 1 and self.scale <= 1.0:
            raise DreamError(f"--scale must be above 1 when --octaves is more than 1 (got {self.scale}); "
                             "1.3-2 is typical")
        if not self.lr >= 0 or not np.isfinite(self.lr):
            raise DreamError(f"--lr must be zero or positive (got {self.lr})")
        if self.jitter < 0:
            raise DreamError(f"--jitter must be zero or positive (got {self.jitter})")
        if not self.smoothing >= 0 or not np.isfinite(self.smoothing):
            raise DreamError(f"--smoothing must be zero or positive (got {self.smoothing})")
        if self.grad_norm not in GRAD_NORMS:
            raise DreamError(f"unknown gradient normalisation '{self.grad_norm}'; use one of {', '.join(GRAD_NORMS)}")
        if self.tile_size is not None and self.tile_size < 0:
            raise DreamError(f"--tile-size must be positive, or 0 for whole-image steps (got {self.tile_size})")
        if self.max_memory is not None and self.max_memory <= 0:
            raise DreamError(f"--max-memory must be positive (got {self.max_memory} bytes); e.g. --max-memory 6GB")
        if self.channels is not None and any(c < 0 for c in self.channels):
            raise DreamError("--channels takes channel indices from 0 up; see the layer's channel count")

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> DreamSettings:
        """``as_dict``'s inverse, also of its JSON form (a job's context: lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
