"""The job runner: the one loop behind every job of many items (a batch of photos x models, a
sweep's renders, a clip's chunks, the atlas), on one process or over the ranks of ``mlx.launch``.

A mode describes its job (a ``Job``): the items, each with the files it makes, its cost, a JSON
``spec`` (what any rank needs to make it) and its ``record`` (what decides its pixels); how rank 0
reads an item's input (``payload``) and how any rank makes it (``make``). ``run_job`` does the rest,
the same for every mode:

* **Resume.** An item whose outputs all exist with its record is skipped; an output made with
  other settings is refused in one line, unless ``--overwrite`` (the rule: ``outputs.py``). An
  item made again for some of its outputs (a sweep's batch with one file deleted) writes only
  those: the others are finished already, the same bytes.
* **Sharing.** Items, largest first, are dealt in rounds of one per rank, the largest of a round to
  the rank with the least work so far. Every round ends with an exchange, so a rank waits at most
  for the largest item of its round; sorted rounds make that waste, over the whole job, at most
  the cost of the largest item. Where a mode shares its items itself (a clip's chunks, which are
  contiguous), it overrides ``assign``.
* **Transport.** Rank 0 alone reads inputs and writes outputs. Each round it broadcasts the
  round's inputs (``distributed.broadcast_bytes``), every rank makes its unit, and one
  ``all_gather`` brings the encoded results to rank 0, which writes them atomically. Other hosts
  need no input file and write nothing; with one process both exchanges are no-ops.
* **Seeds** come from ``--seed`` and the item (the mode's ``spec``), never from the rank, so a
  result does not depend on how many ranks made it.
* **Progress.** One bar on rank 0 over the job's outputs (a single item shows its own steps),
  then a summary: done / skipped / failed, each failure with its one-line reason.
* **Faults.** An item whose input or dream fails with a user error fails alone: nothing of it is
  written, the job goes on, and the command exits non-zero at the end. A rank that dies or
  freezes stops every rank through the ``distributed.session`` the script runs in (one line
  naming it); Ctrl-C keeps what was written. Either way a rerun makes only what is missing.

``run_job(..., finished=hook)`` hands the ``JobReport`` (what was made, skipped and failed, and
where) to a page writer or any other consumer, on rank 0, once the job is done, and after Ctrl-C
too (``report.interrupted``: the report then holds what was finished), so a page shows what exists.
"""

from __future__ import annotations

import io
import json
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import distributed as dist
from .errors import USER_ERRORS, DreamError, Interrupted
from .image_io import read_image_record, write_bytes
from .outputs import State, output_state, shown_differences


@dataclass(frozen=True)
class Item:
    """One piece of a job: the files it makes (rank 0's paths), made in ``units`` steps on one rank."""

    key: str                                  # unique and stable across runs: names it in messages
    outputs: tuple[str, ...]                  # the files it makes; all present (with its record) = finished
    cost: float = 1.0                         # its work (pixel-steps): what sharing balances
    spec: dict[str, Any] = field(default_factory=dict)   # JSON: what any rank needs to make it
    record: dict[str, Any] | None = None      # what decides its pixels (None: the mode checks resume itself)
    units: int = 1                            # steps, one per round (a chunk's frames); 1 for most items
    label: str = ""                           # how sheets and pages caption it
    error: str | None = None                  # known to fail before any work (an unreadable input)
    captions: tuple[str, ...] = ()            # each output's caption, where they differ (a sweep's batch)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Item:
        return cls(**{**data, "outputs": tuple(data["outputs"]), "captions": tuple(data.get("captions", ()))})

    def captioned(self) -> list[dict[str, str]]:
        """Each output with its caption."""
        return [{"path": path, "caption": self.captions[k] if self.captions else self.label}
                for k, path in enumerate(self.outputs)]


#: What a unit returns: (index into its item's outputs, the file's bytes) for each file it finished.
Outputs = list[tuple[int, bytes]]


class Job(ABC):
    """A mode's description of its job (see the module). ``items``, ``payload`` and ``finish`` run on
    rank 0; ``start`` and ``make`` on every rank."""

    #: What the progress bar and the summary count (one per output).
    noun: str = "item"
    #: Print each output's path on stdout as it is written.
    announce: bool = True
    #: Make outputs again although they exist with other settings (--overwrite).
    overwrite: bool = False
    #: Whether the user gave --seed (without it, a finished output's seed does not matter).
    seed_given: bool = True

    @abstractmethod
    def items(self) -> list[Item]:
        """Rank 0: every item, finished ones included; every check before any work (raise DreamError)."""

    def context(self) -> dict[str, Any]:
        """Rank 0: what every rank needs besides the items (JSON), e.g. resolved settings and the seed."""
        return {}

    def start(self, context: dict[str, Any]) -> None:
        """Every rank, before the first round (``context`` is rank 0's)."""

    def assign(self, items: Sequence[Item], ranks: int) -> list[list[int]]:
        """Which items (indices into ``items``) each rank makes, in order."""
        return deal([item.cost for item in items], ranks)

    def payload(self, item: Item, unit: int) -> bytes:
        """Rank 0: the input the rank making ``unit`` of ``item`` needs (a photo's bytes, a frame)."""
        return b""

    @abstractmethod
    def make(self, item: Item, unit: int, payload: bytes, progress: bool) -> Outputs:
        """Make ``unit`` of ``item`` (units come in order, on one rank); ``progress``: show its own bar."""

    def already_made(self) -> int:
        """Outputs finished before this run that no item lists (a clip's saved frames)."""
        return 0

    def notice(self, todo: Sequence[Item], kept: int) -> str | None:
        """Rank 0, after the plan and before the first round: the line that announces the work (an
        atlas's count and estimated time). None: the runner's own, when there are several ranks or
        ``kept`` outputs are finished already."""
        return None

    def finish(self, report: JobReport) -> list[Path]:
        """Rank 0, after the last round: what is made of the outputs (contact sheets, the video)."""
        return []

    def where(self) -> str:
        """Where the outputs are, for messages."""
        return "the output folder"

    def interrupted(self, kept: int, total: int) -> str:
        """The line after Ctrl-C, when ``kept`` of ``total`` outputs are finished."""
        return f"interrupted; {kept} of {total} {plural(self.noun, total)} are in {self.where()}; run the same " \
               "command to make the rest"


def plural(noun: str, count: int) -> str:
    return noun if count == 1 else noun + "s"


@dataclass
class JobReport:
    """What a job did, for the summary, the finish step and page writers (``run_job(finished=...)``)."""

    job: Job
    made: list[Item] = field(default_factory=list)           # finished in this run
    skipped: list[Item] = field(default_factory=list)        # finished before
    failed: list[tuple[Item, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)        # files written in this run
    extra: list[Path] = field(default_factory=list)          # what ``finish`` made of them
    ranks: int = 1
    seconds: float = 0.0
    comm_seconds: list[float] = field(default_factory=list)  # each rank's time in the exchanges
    rank_costs: list[float] = field(default_factory=list)    # each rank's share of the work (its items' costs)
    interrupted: bool = False                                # stopped by Ctrl-C
    unfinished: list[Item] = field(default_factory=list)     # after Ctrl-C: items left unfinished
    present: set[str] = field(default_factory=set)           # every output finished (with its record), at the end

    @property
    def ok(self) -> bool:
        return not self.failed

    def description(self) -> dict[str, Any]:
        """The job as plain data (what a page writer needs): each item's key, label, spec, outputs
        (path and caption) and status, the failures' reasons, and the extra files (contact sheets, a
        video). After Ctrl-C, an unfinished item lists the outputs it has finished."""
        failed = {item.key: reason for item, reason in self.failed}

        def entry(item: Item, status: str, outputs: list[dict[str, str]]) -> dict[str, Any]:
            return {"key": item.key, "label": item.label, "spec": item.spec, "outputs": outputs, "status": status}

        items = [entry(i, status, i.captioned())
                 for status, group in (("skipped", self.skipped), ("made", self.made)) for i in group]
        items += [entry(i, "unfinished", [o for o in i.captioned() if o["path"] in self.present])
                  for i in self.unfinished]
        items += [{**entry(i, "failed", []), "reason": failed[i.key]} for i, _ in self.failed]
        return {"noun": self.job.noun, "where": self.job.where(), "items": items,
                "extra": [str(p) for p in self.extra], "interrupted": self.interrupted}


# -- sharing -------------------------------------------------------------------------------------

def deal(costs: Sequence[float], ranks: int) -> list[list[int]]:
    """Item indices per rank: largest first, dealt in rounds of ``ranks``, each round's largest to the
    rank with the least work so far (ties: the lower rank, so rank 0 takes a job of one item)."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    load = [0.0] * ranks
    queues: list[list[int]] = [[] for _ in range(ranks)]
    for first in range(0, len(order), ranks):
        free = sorted(range(ranks), key=lambda r: (load[r], r))
        for index, r in zip(order[first:first + ranks], free):
            queues[r].append(index)
            load[r] += costs[index]
    return queues


def units_of(items: Sequence[Item], queue: Sequence[int]) -> list[tuple[int, int]]:
    """A rank's work as (item index, unit) pairs, in order: one per round."""
    return [(index, unit) for index in queue for unit in range(items[index].units)]


# -- what travels ----------------------------------------------------------------------------------

def pack(header: Any, blobs: Sequence[bytes]) -> bytes:
    """A JSON header and byte strings as one message (``unpack`` reverses it)."""
    head = json.dumps({"header": header, "sizes": [len(b) for b in blobs]}).encode()
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


def unpack(message: bytes) -> tuple[Any, list[bytes]]:
    size = int.from_bytes(message[:8], "little")
    head = json.loads(message[8:8 + size])
    blobs, offset = [], 8 + size
    for n in head["sizes"]:
        blobs.append(message[offset:offset + n])
        offset += n
    return head["header"], blobs


def pack_arrays(arrays: Sequence[np.ndarray]) -> bytes:
    """Arrays (frames) as bytes, exactly (``.npy``, no pickles)."""
    blobs = []
    for a in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(a), allow_pickle=False)
        blobs.append(buffer.getvalue())
    return pack(None, blobs)


def unpack_arrays(message: bytes) -> list[np.ndarray]:
    return [np.load(io.BytesIO(b), allow_pickle=False) for b in unpack(message)[1]]


class _Exchange:
    """The round's two collectives, timed: rank 0's inputs out, every rank's results back."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def scatter(self, messages: list[bytes] | None) -> bytes:
        """Rank 0's message for each rank (a list on rank 0, None elsewhere) -> this rank's."""
        start = time.perf_counter()
        if dist.size() == 1:
            mine = messages[0] if messages else b""
        else:
            _, blobs = unpack(dist.broadcast_bytes(pack(None, messages) if dist.is_main() and messages else None))
            mine = blobs[dist.rank()]
        self.seconds += time.perf_counter() - start
        return mine

    def gather(self, message: bytes) -> list[bytes]:
        start = time.perf_counter()
        every = dist.all_gather_bytes(message)
        self.seconds += time.perf_counter() - start
        return every


# -- the run -------------------------------------------------------------------------------------

def run_job(job: Job, *, quiet: bool = False, notify: Callable[[str], None] | None = None,
            finished: Callable[[JobReport], None] | None = None) -> JobReport:
    """Run ``job`` on every rank (see the module); returns its report (complete on rank 0).

    Raises on rank 0: the first item's error when the job is that one item, ``DreamError`` naming
    the failures at the end of a job of several, ``Interrupted`` after Ctrl-C saying what was kept.
    """
    started = time.perf_counter()
    say = dist.main_only(notify or (lambda message: None))
    exchange = _Exchange()
    plan, present = None, set()
    if dist.is_main():
        plan, present = _plan(job)
    plan = dist.broadcast_json(plan)
    items = [Item.from_json(d) for d in plan["todo"]]
    skipped = [Item.from_json(d) for d in plan["skipped"]]
    report = JobReport(job, skipped=skipped, ranks=dist.size())
    failed_early = [(Item.from_json(d), d["error"]) for d in plan["failed"]]
    report.failed.extend(failed_early)
    total, kept = plan["total"], plan["kept"]
    job.start(plan["context"])
    queues = job.assign(items, dist.size())
    work = [units_of(items, q) for q in queues]
    rounds = max((len(w) for w in work), default=0)
    # One item to make and nothing else: it shows its own progress (a dream's steps), as always.
    single = len(items) == 1 and items[0].units == 1 and not skipped and not report.failed
    notice = job.notice(items, kept) if dist.is_main() and items else None
    if notice is not None:
        say(notice)
    elif items and (dist.size() > 1 or kept):
        ranks = f" over {dist.describe()}" if dist.size() > 1 else ""
        before = f" ({kept} already made)" if kept else ""
        count = sum(len(i.outputs) for i in items)
        say(f"{count} {plural(job.noun, count)} to make{before}{ranks}")
    from tqdm import tqdm

    bar = tqdm(total=total, initial=kept, unit=job.noun, desc=plural(job.noun, 2),
               disable=quiet or single or not dist.is_main() or not items, file=sys.stderr, dynamic_ncols=True)
    outside = kept - len(present)           # finished outputs no item lists (a clip's saved frames)
    dead: set[str] = set()                  # items that failed: rank 0 skips their remaining units
    units_done: dict[str, int] = {}
    try:
        with bar:
            for r in range(rounds):
                current = [w[r] if r < len(w) else None for w in work]
                messages = _payloads(job, items, current, dead, report) if dist.is_main() else None
                message = exchange.scatter(messages)
                result = _make(job, items, current[dist.rank()], message,
                               progress=single and not quiet and dist.is_main())
                results = exchange.gather(result)
                if dist.is_main():
                    _collect(job, items, current, results, dead, units_done, report, bar, quiet, present)
        report.rank_costs = [sum(items[i].cost for i in q) for q in queues]
        report.comm_seconds = [float(s) for s in dist.gather_json(exchange.seconds)]
        if dist.is_main():
            with dist.write_guard():
                report.extra = job.finish(report)
            if not quiet:
                for path in report.extra:
                    print(path, flush=True)
    except KeyboardInterrupt as exc:
        if dist.is_main():
            present |= _finished_now(items)
            kept = outside + len(present)
            report.interrupted, report.present = True, present
            finished_items = {i.key for i in report.made} | {i.key for i, _ in report.failed}
            for item in items:
                if item.key not in finished_items:
                    done = all(path in present for path in item.outputs)
                    (report.made if done else report.unfinished).append(item)
            if finished is not None:
                finished(report)   # the page of what exists
            if kept:
                raise Interrupted(job.interrupted(kept, total)) from None
        raise exc
    report.seconds = time.perf_counter() - started
    if not dist.is_main():
        return report
    report.present = present
    _summarise(job, report, single, say)
    if finished is not None:
        finished(report)
    if report.failed:
        if len(report.failed) == 1 and not report.made and not report.skipped:
            raise DreamError(report.failed[0][1])
        count = _outputs(report.made) + _outputs(report.skipped) + _outputs(i for i, _ in report.failed)
        failed = _outputs(i for i, _ in report.failed)
        raise DreamError(f"{failed} of {count} {plural(job.noun, count)} failed (listed above); fix or remove the "
                         "inputs named and run the same command to make them")
    return report


def _finished_now(items: Sequence[Item]) -> set[str]:
    """Rank 0, after Ctrl-C: the outputs of ``items`` finished on disk (a write may have just ended)."""
    return {path for item in items for path in item.outputs
            if Path(path).is_file() and (item.record is None or read_image_record(path) == item.record)}


def _outputs(items: Any) -> int:
    return sum(len(item.outputs) for item in items)


def _plan(job: Job) -> tuple[dict[str, Any], set[str]]:
    """Rank 0: every item, sorted into finished, failed-before-work and to make, the rule for existing
    outputs applied (one line naming the first conflict, unless --overwrite); and the outputs that
    are finished already (an item to make may hold some: a sweep's batch with one file missing)."""
    todo, skipped, failed, conflicts = [], [], [], []
    present: set[str] = set()
    for item in job.items():
        if item.error is not None:
            failed.append({**item.as_json(), "error": item.error})
            continue
        if item.record is None:
            todo.append(item)
            continue
        states = [(path, *output_state(Path(path), item.record, seed_given=job.seed_given)) for path in item.outputs]
        if not job.overwrite:
            present.update(path for path, state, _ in states if state is State.SAME)
        if all(state is State.SAME for _, state, _ in states) and not job.overwrite:
            skipped.append(item)
            continue
        if not job.overwrite:
            conflicts += [(path, diffs) for path, state, diffs in states if state is State.OTHER]
        todo.append(item)
    if conflicts:
        path, diffs = conflicts[0]
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise DreamError(f"'{path}'{more} was made with other settings ({shown_differences(diffs)}); add --overwrite "
                         "to make it again, repeat that run's settings to keep it, or choose another --output")
    kept = len(present) + job.already_made()
    total = job.already_made() + len({path for i in (*skipped, *todo) for path in i.outputs})
    return {"todo": [i.as_json() for i in todo], "skipped": [i.as_json() for i in skipped], "failed": failed,
            "total": total, "kept": kept, "context": job.context()}, present


def _payloads(job: Job, items: list[Item], current: list[tuple[int, int] | None], dead: set[str],
              report: JobReport) -> list[bytes]:
    """Rank 0: this round's message for each rank: its unit's input, or why it is skipped."""
    messages = []
    for unit in current:
        if unit is None or items[unit[0]].key in dead:
            messages.append(pack({"skip": True}, []))
            continue
        item = items[unit[0]]
        try:
            messages.append(pack({}, [job.payload(item, unit[1])]))
        except USER_ERRORS as exc:  # an input that vanished or went bad since the plan
            dead.add(item.key)
            report.failed.append((item, " ".join(str(exc).split())))
            messages.append(pack({"skip": True}, []))
    return messages


def _make(job: Job, items: list[Item], unit: tuple[int, int] | None, message: bytes, progress: bool) -> bytes:
    """This rank's unit: its outputs, or the one-line reason it failed (the item fails alone)."""
    header, blobs = unpack(message)
    if unit is None or header.get("skip"):
        return pack({}, [])
    try:
        outputs = job.make(items[unit[0]], unit[1], blobs[0], progress)
    except USER_ERRORS as exc:
        return pack({"failed": " ".join(str(exc).split())}, [])
    except MemoryError:
        return pack({"failed": "out of memory; lower --max-memory (smaller tiles) or shrink it with --max-size"}, [])
    return pack({"outputs": [index for index, _ in outputs]}, [data for _, data in outputs])


def _collect(job: Job, items: list[Item], current: list[tuple[int, int] | None], results: list[bytes],
             dead: set[str], units_done: dict[str, int], report: JobReport, bar: Any, quiet: bool,
             present: set[str]) -> None:
    """Rank 0: write this round's outputs (atomically), note failures and finished items."""
    for unit, data in zip(current, results):
        if unit is None:
            continue
        item = items[unit[0]]
        header, blobs = unpack(data)
        if header.get("failed"):
            if item.key not in dead:
                dead.add(item.key)
                report.failed.append((item, header["failed"]))
            continue
        if item.key in dead:
            continue
        for index, blob in zip(header.get("outputs", []), blobs):
            if item.outputs[index] in present:
                continue   # finished before with this record: the same bytes, left as they are
            with dist.write_guard():
                path = write_bytes(item.outputs[index], blob)
            report.written.append(path)
            present.add(item.outputs[index])
            bar.update(1)
            if job.announce and not quiet:
                bar.write(str(path), file=sys.stdout)
        units_done[item.key] = units_done.get(item.key, 0) + 1
        if units_done[item.key] == item.units:
            report.made.append(item)


def _summarise(job: Job, report: JobReport, single: bool, say: Callable[[str], None]) -> None:
    """Rank 0: how many outputs were made, skipped (already made) and failed, and each failure on a line
    of its own (even when quiet)."""
    # An item made again for some of its outputs (a sweep's batch) kept the others: they count as skipped.
    written = {str(path) for path in report.written}
    made = sum(path in written for item in report.made for path in item.outputs)
    skipped = _outputs(report.skipped) + _outputs(report.made) - made
    failed = _outputs(i for i, _ in report.failed)
    count = made + skipped + failed
    if single or (count <= 1 and not skipped) or (len(report.failed) == 1 and not made and not skipped):
        return
    if skipped and not made and not failed:
        what = report.skipped[0].outputs[0] if count == 1 else f"all {count} {plural(job.noun, count)} in {job.where()}"
        say(f"{what}: already made with these settings (--overwrite makes {'it' if count == 1 else 'them'} again)")
        return
    say(f"{job.noun}s: {made} made, {skipped} skipped (already made), {failed} failed")
    if report.ranks > 1 and sum(report.rank_costs) > 0:
        shares = " ".join(f"{c / sum(report.rank_costs):.0%}" for c in report.rank_costs)
        say(f"the ranks' shares of the work: {shares}; time in the exchanges: "
            f"{max(report.comm_seconds) / max(report.seconds, 1e-9):.0%} at most")
    for item, reason in report.failed:
        print(f"failed: {reason}" if item.key in reason else f"failed: {item.key}: {reason}", file=sys.stderr, flush=True)
