"""A clip as a job (``jobs.run_job``): its missing frames in contiguous chunks, one or more per rank.

Frame n of a clip is made from input frames n-1 and n and from dreamed frame n-1 as saved
(``clip.clip_frame``), so a run of frames can be continued exactly from the frame before it. The
frames still missing form runs (the whole clip the first time). To give every rank work they are
cut into shares of equal work (a share that warms up gets fewer frames), one per rank, each a
chunk (or several, around frames already saved):

* a chunk that starts at frame 0, or right after a saved frame, continues exactly as one process
  would (the saved frame is its previous dream): a resumed run, on any number of ranks, makes the
  frames the stopped one would have;
* a cut between shares moves to a scene cut within ``--chunk-warmup`` frames of it when there is
  one (``flow.is_scene_cut``: the dream restarts there from the input anyway), so that chunk, too,
  is what one process makes;
* any other chunk starts ``--chunk-warmup`` frames early, from the input alone. Its dream never
  becomes the earlier chunk's: the carried dream keeps its own history, and two histories of one
  scene stay as far apart as unrelated dreams (measured: their first shared frame differs by about
  three times the change between two frames, whatever the warm-up's length). So its warm-up frames
  are kept (``NNNNN-to-MMMMM.png``) and the video dissolves from the earlier chunk's frames into
  them, the weight rising linearly to the border (``store.frame_sources``): the change between two
  frames across the border is then that inside a chunk (``benchmarks/scale_out.py`` measures it).

Rank 0 alone reads the clip: every round it decodes each rank's next input frame (a chunk's
decoder starts at the key frame before it) and sends it; the dreamed frames come back as PNG
bytes, which rank 0 writes into the frames folder. It encodes the video at the end with the clip's
sound and timestamps, exactly as one process does. Each frame is saved when made, so a stopped
run resumes chunk by chunk.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import distributed as dist
from ..dreamer import Dreamer, dreamer_on_rank, guide_payload
from ..errors import Notify
from ..image_io import encode_image
from ..jobs import Item, JobReport, Outputs, pack_arrays, plural, unpack_arrays
from .clip import Clip, ClipMode, ClipSettings, as_float, clip_frame, decoded_frames
from .encoding import encode_video, read_frame_file
from .flow import Coherence, is_scene_cut
from .modes import VideoJob, plan_video
from .store import (
    clear_frames,
    frame_path,
    frame_sources,
    overlap_path,
    present_frames,
    prune_overlaps,
    quantise,
    write_record,
)


@dataclass(frozen=True)
class Chunk:
    """Frames ``first`` .. ``end - 1`` kept, dreamed from ``begin`` (warm-up frames before ``first``)."""

    first: int
    end: int
    begin: int
    after_saved: bool   # frame ``begin - 1`` is saved: continue from it (its input and dream)
    share: int          # the rank whose share it is

    @property
    def warmed_up(self) -> bool:
        """Started mid-scene from the input alone: where a seam could show (else it is exact)."""
        return 0 < self.begin < self.first and not self.after_saved


def runs(indices: Sequence[int]) -> list[list[int]]:
    """Sorted indices as runs of consecutive ones."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][-1] == i - 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def plan_chunks(total: int, present: set[int], ranks: int, warmup: int,
                is_cut: Callable[[int], bool] | None) -> list[Chunk]:
    """The missing frames of a clip of ``total`` as chunks (see the module). ``is_cut(i)``: whether
    frame ``i`` starts a new scene (None: no frame depends on the one before, so no chunk needs
    warming up: ``--no-flow``)."""
    missing = [i for i in range(total) if i not in present]
    if not missing:
        return []
    # Equal work per rank, counting the warm-up of each share that starts mid-run (after a missing frame).
    lead = warmup if is_cut is not None else 0

    def mid_run(at: int) -> bool:
        return at < len(missing) and missing[at] > 0 and missing[at] - 1 not in present

    warmed = sum(mid_run(len(missing) * r // ranks) for r in range(1, ranks)) if lead else 0
    share = (len(missing) + warmed * lead) / ranks
    bounds, started_mid = [0], 0
    for r in range(1, ranks):
        bounds.append(min(len(missing), max(bounds[-1], int(r * share - started_mid * lead))))
        started_mid += bool(lead) and mid_run(bounds[-1])
    bounds.append(len(missing))
    for r in range(1, ranks):
        at = bounds[r]
        if at >= len(missing) or is_cut is None:
            continue
        frame = missing[at]
        if frame == 0 or frame - 1 in present:
            continue
        # The nearest scene cut within reach, nearer first, earlier on a tie; the order of the shares is kept.
        for step in range(1, warmup + 1):
            moved = next((at + d for d in (-step, step) if bounds[r - 1] < at + d < bounds[r + 1]
                          and missing[at + d] == frame + d and is_cut(frame + d)), None)
            if moved is not None:
                bounds[r] = moved
                break
    chunks = []
    for share in range(ranks):
        for run in runs(missing[bounds[share]:bounds[share + 1]]):
            first, end = run[0], run[-1] + 1
            if first == 0 or first - 1 in present:
                chunks.append(Chunk(first, end, first, first > 0, share))
            elif is_cut is None or is_cut(first):
                chunks.append(Chunk(first, end, first, False, share))
            else:
                # Warm up from the input alone, or from the start of its run when that is nearer (then exact).
                start = first
                while start > first - warmup and start - 1 not in present and start > 0:
                    start -= 1
                exact = start == 0 or start - 1 in present
                chunks.append(Chunk(first, end, start, exact and start > 0, share))
    return chunks


class ClipJob(VideoJob):
    """``--video`` as a job of chunks (see the module)."""

    noun = "frame"
    announce = False

    def __init__(self, mode: ClipMode, args: argparse.Namespace, checked: ClipSettings, notify: Notify) -> None:
        self.mode, self.args, self.checked, self.notify = mode, args, checked, notify
        self.done_before = 0
        self.decoders: dict[str, Iterator[np.ndarray]] = {}
        self.state: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
        self.dreamer: Dreamer | None = None
        self.ctx: dict[str, Any] = {}

    @property
    def clip(self) -> Clip:
        assert self.plan is not None
        return self.plan.source  # type: ignore[return-value]

    def where(self) -> str:
        return str(self.plan.folder) if self.plan is not None else "the frames folder"

    # rank 0 ------------------------------------------------------------------------------------

    def items(self) -> list[Item]:
        plan = self.plan = plan_video(self.mode, self.args, self.checked, self.notify)
        total, folder = plan.video.total, plan.folder
        if self.args.restart:
            clear_frames(folder)  # every check has passed: the old frames go now
        present = {i for i in present_frames(folder) if i < total}
        prune_overlaps(folder, present)
        self.done_before = len(present)
        if plan.resume.done > total:
            self.notify(f"{folder} holds {plan.resume.done} frames; the video uses the first {total}")
        if len(present) < total:
            write_record(folder, plan.record)
        coherence = self.checked.coherence
        chunks = plan_chunks(total, present, dist.size(), self.checked.warmup,
                             None if coherence.no_flow else self.cut_finder())
        h, w = plan.video.size[1], plan.video.size[0]
        items = []
        for c in chunks:
            # A warmed-up chunk's warm-up frames are kept for the dissolve; an exact one's would repeat frames.
            kept = c.begin if c.warmed_up else c.first
            outputs = [overlap_path(folder, i, c.first) for i in range(kept, c.first)]
            outputs += [frame_path(folder, i) for i in range(c.first, c.end)]
            items.append(Item(key=f"frames {c.first}-{c.end - 1}", label=f"frames {c.first}-{c.end - 1}",
                              outputs=tuple(map(str, outputs)), units=c.end - c.begin,
                              cost=float((c.end - c.begin) * w * h),
                              spec={"first": c.first, "end": c.end, "begin": c.begin, "kept": kept,
                                    "after_saved": c.after_saved, "share": c.share}))
        return items

    def cut_finder(self) -> Callable[[int], bool]:
        """Whether frame i starts a scene (decoding frames i-1 and i; asked near the shares' borders only)."""
        coherence: Coherence = self.checked.coherence

        def is_cut(i: int) -> bool:
            if i == 0:
                return True
            frames = decoded_frames(self.clip, i - 1)
            before, now = next(frames), next(frames)
            frames.close()
            return is_scene_cut(as_float(before), as_float(now), coherence)

        return functools.cache(is_cut)      # plan_chunks asks again about a frame it moved a border to

    def already_made(self) -> int:
        return self.done_before

    def context(self) -> dict[str, Any]:
        plan = self.plan
        assert plan is not None
        return {"model": plan.model.name, "weights": self.args.weights, "settings": plan.settings.as_dict(),
                "guide": guide_payload(plan.settings), "seed": plan.resume.seed}

    def assign(self, items: Sequence[Item], ranks: int) -> list[list[int]]:
        """Each rank its own share of the clip (its chunks in order)."""
        return [[i for i, item in enumerate(items) if item.spec["share"] == r] for r in range(ranks)]

    def payload(self, item: Item, unit: int) -> bytes:
        """Input frame ``begin + unit``; with the first unit of a chunk that continues a saved frame, that
        frame's input and its dream as saved."""
        spec = item.spec
        index = spec["begin"] + unit
        arrays = []
        if unit == 0:
            start = index - 1 if spec["after_saved"] else index
            self.decoders[item.key] = decoded_frames(self.clip, start)
            if spec["after_saved"]:
                assert self.plan is not None
                arrays += [next(self.decoders[item.key]), read_frame_file(frame_path(self.plan.folder, index - 1))]
        arrays.append(next(self.decoders[item.key]))
        if index + 1 == spec["end"]:
            self.decoders.pop(item.key).close()
        return pack_arrays(arrays)

    # every rank --------------------------------------------------------------------------------

    def start(self, context: dict[str, Any]) -> None:
        self.ctx = context

    def dream(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.dreamer is None:
            if self.plan is not None:   # rank 0 built it while checking
                self.dreamer = self.plan.dreamer
            else:
                self.dreamer = dreamer_on_rank(self.ctx["model"], self.ctx["weights"], self.ctx["settings"],
                                               self.ctx["guide"], dist.main_only(self.notify))
        return self.dreamer(image, rng=rng, progress=False)

    def make(self, item: Item, unit: int, payload: bytes, progress: bool) -> Outputs:
        spec = item.spec
        index = spec["begin"] + unit
        arrays = [as_float(a) for a in unpack_arrays(payload)]
        previous_input, previous_dream = (arrays[0], arrays[1]) if len(arrays) == 3 else self.state.get(
            item.key, (None, None)) if unit else (None, None)
        current = arrays[-1]
        frame = quantise(clip_frame(index, current, previous_input, previous_dream, self.checked.coherence,
                                    self.checked.blend, self.dream, self.ctx["seed"]))
        self.state[item.key] = (current, frame)
        if index + 1 == spec["end"]:
            del self.state[item.key]
        if index < spec["kept"]:
            return []  # a warm-up frame of an exact chunk: the earlier chunk makes the same
        return [(index - spec["kept"], encode_image(frame, item.outputs[index - spec["kept"]]))]

    # rank 0, at the end ------------------------------------------------------------------------

    def finish(self, report: JobReport) -> list[Path]:
        """The video, from every frame, with the clip's timing and sound (as one process writes it)."""
        plan = self.plan
        assert plan is not None
        if report.failed:
            return []
        encode_video(frame_sources(plan.folder, plan.video.total), plan.output, plan.video.timing, plan.video.extra)
        return [plan.output]

    def interrupted(self, kept: int, total: int) -> str:
        return (f"interrupted; {kept} of {total} {plural(self.noun, total)} are saved in {self.where()}; run the "
                "same command again to continue and write the video")
