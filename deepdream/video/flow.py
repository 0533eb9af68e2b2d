"""Temporal coherence for dreaming a clip: carry the previous dreamed frame along the optical flow.

Dreamed one by one, the frames of a clip flicker: each grows its eyes and pagodas in new
places. The remedy of the optical-flow DeepDream video tools: measure the dense optical flow
between consecutive *input* frames, warp the previous *dreamed* frame along it, blend that
into the new input frame, and dream the blend, so the hallucinations already there are
redrawn where the scene moved to instead of being invented anew::

    warped  = previous_dream moved along flow(input_t -> input_t-1)
    weight  = flow_blend where the flow is reliable, occlusion_blend where it is not
    start_t = weight * warped + (1 - weight) * input_t        (input_t alone after a scene cut)
    frame_t = start_t + strength * (dream(start_t) - start_t)

``strength`` is 1 where nothing was carried and ``flow_refresh`` where the previous dream came
along: a frame's new dream detail is largely unrelated to the last one's (a network is not
shift-equivariant at a few pixels), so adding a full dream on top of the carried one would
bring the flicker back; a partial one renews the carried dream, which settles at a strength
set by ``flow_blend``.

The flow is unreliable where the forward and backward flows disagree (occlusions and
disocclusions, Sundaram et al. 2010's check, as in Ruder et al.'s video style transfer) or
where it points outside the frame; a scene cut is a frame the previous one cannot explain
even after motion compensation, and there the dream restarts from the input.

OpenCV does the flow (``opencv-python-headless``): DIS (Kroeger et al. 2016) by default, or
Farneback; ``benchmarks/video_flow.py`` measures both on a clip of known motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import DreamError

FLOW_METHODS = ("dis", "farneback")
#: Forward-backward consistency (Sundaram et al. 2010): a pixel's round trip may miss by this
#: share of its squared motion plus a constant in px^2 before the flow there counts as wrong.
FB_RELATIVE = 0.01
FB_ABSOLUTE = 0.5
#: The unreliable mask is softened by this Gaussian (px) so the blend has no hard seams.
MASK_SIGMA = 1.5


@dataclass(frozen=True)
class Coherence:
    """How a clip's frame is started from the previous dreamed frame (the flags of the same names)."""

    no_flow: bool = False            # dream every frame from its input alone
    flow_blend: float = 0.8          # share of the warped previous dream where the flow is reliable
    occlusion_blend: float = 0.0     # the same where it is not (occlusions, borders)
    scene_cut: float = 0.1           # mean |input_t - warped input_t-1| (0..1) above which a cut restarts the dream
    flow_method: str = "dis"
    flow_refresh: float = 0.5        # share of a full dream added where the dream was carried

    def strength(self, carried: Carried | None) -> np.ndarray | float:
        """How much of a frame's dream is added: the full dream where nothing was carried (the first frame,
        a cut, occlusions), ``flow_refresh`` of it where the previous dream came along and only needs
        renewing. Frame to frame the new dream's detail is mostly unrelated to the carried one, so a
        full dream on top of it would bring the flicker back."""
        if carried is None or carried.cut:  # a cut starts afresh, exactly like the first frame
            return 1.0
        return self.flow_refresh + (1.0 - self.flow_refresh) * carried.fresh

    def validate(self) -> None:
        for flag, value in (("--flow-blend", self.flow_blend), ("--occlusion-blend", self.occlusion_blend),
                            ("--flow-refresh", self.flow_refresh)):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise DreamError(f"{flag} must be between 0 and 1 (got {value:g}); it is the share of the previous "
                                 "dreamed frame carried into the next")
        if not (math.isfinite(self.scene_cut) and self.scene_cut > 0):
            raise DreamError(f"--scene-cut must be a positive number (got {self.scene_cut:g}); it is a mean pixel "
                             "difference between 0 and 1, 0.1-0.2 is typical")
        if self.flow_method not in FLOW_METHODS:
            raise DreamError(f"unknown --flow-method '{self.flow_method}'; use one of {', '.join(FLOW_METHODS)}")


@dataclass(frozen=True)
class Carried:
    """A frame's start image and what the flow found."""

    start: np.ndarray          # float32 (H, W, 3): what gets dreamed
    fresh: np.ndarray          # float32 (H, W, 1): 1 where nothing was carried (unreliable flow), 0 where it was
    unreliable: float          # share of pixels whose flow failed the checks
    residual: float            # mean |input_t - warped input_t-1|, the scene-cut measure
    cut: bool


def gray(rgb: np.ndarray) -> np.ndarray:
    """8-bit luma (BT.601), what the flow methods expect."""
    import cv2

    return cv2.cvtColor(np.ascontiguousarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)), cv2.COLOR_RGB2GRAY)


def dense_flow(source: np.ndarray, target: np.ndarray, method: str = "dis") -> np.ndarray:
    """Flow (H, W, 2) in pixels (dx, dy) such that ``source(p) ~ target(p + flow(p))``; both 8-bit gray."""
    import cv2

    if method == "dis":
        # MEDIUM: the most accurate preset on a textured pan (benchmarks/video_flow.py), still cheap next to a dream.
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return dis.calc(source, target, None)
    if method == "farneback":
        # OpenCV's documented example parameters (pyramid 0.5 x 3 levels, 15 px window, 3 iterations).
        return cv2.calcOpticalFlowFarneback(source, target, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    raise DreamError(f"unknown --flow-method '{method}'; use one of {', '.join(FLOW_METHODS)}")


@lru_cache(maxsize=4)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y), made once per frame size: a clip's frames all share one."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def sample_along(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``out(p) = image(p + flow(p))``, bilinear, mirrored at the border (as the zoom's move)."""
    import cv2

    xs, ys = _grid(*flow.shape[:2])
    return cv2.remap(np.ascontiguousarray(image, dtype=np.float32), xs + flow[..., 0], ys + flow[..., 1],
                     interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def unreliable_mask(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """True where ``backward`` (t -> t-1) fails the round trip through ``forward`` (t-1 -> t) or leaves the frame."""
    h, w = backward.shape[:2]
    xs, ys = _grid(h, w)
    tx, ty = xs + backward[..., 0], ys + backward[..., 1]
    outside = (tx < 0) | (tx > w - 1) | (ty < 0) | (ty > h - 1)
    returned = sample_along(forward, backward)
    miss = np.sum((backward + returned) ** 2, axis=2)
    allowed = FB_RELATIVE * (np.sum(backward**2, axis=2) + np.sum(returned**2, axis=2)) + FB_ABSOLUTE
    return outside | (miss > allowed)


def scene_residual(previous_input: np.ndarray, current_input: np.ndarray, method: str
                   ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """The scene-cut measure, mean |input_t - input_t-1 moved along the flow| (0..1), with what it was
    computed from: the frames' luma (now, before) and the backward flow (t -> t-1)."""
    now, before = gray(current_input), gray(previous_input)
    backward = dense_flow(now, before, method)
    residual = float(np.mean(np.abs(now.astype(np.float32) - sample_along(before, backward)))) / 255.0
    return residual, now, before, backward


def is_scene_cut(previous_input: np.ndarray, current_input: np.ndarray, coherence: Coherence) -> bool:
    """Whether ``carry`` restarts the dream at ``current_input`` (decided by the inputs alone)."""
    return scene_residual(previous_input, current_input, coherence.flow_method)[0] > coherence.scene_cut


def carry(previous_input: np.ndarray, previous_dream: np.ndarray, current_input: np.ndarray,
          coherence: Coherence) -> Carried:
    """The start image of the current frame: the previous dream moved along the input's flow, blended in."""
    import cv2

    residual, now, before, backward = scene_residual(previous_input, current_input, coherence.flow_method)
    if residual > coherence.scene_cut:
        return Carried(np.asarray(current_input, np.float32), np.ones(now.shape + (1,), np.float32), 1.0, residual,
                       True)
    forward = dense_flow(before, now, coherence.flow_method)
    bad = unreliable_mask(backward, forward).astype(np.float32)
    soft = cv2.GaussianBlur(bad, (0, 0), MASK_SIGMA)
    weight = (coherence.flow_blend + (coherence.occlusion_blend - coherence.flow_blend) * soft)[..., None]
    warped = sample_along(previous_dream, backward)
    start = weight * warped + (1.0 - weight) * current_input
    return Carried(np.clip(start, 0.0, 1.0).astype(np.float32), soft[..., None], float(bad.mean()), residual, False)
