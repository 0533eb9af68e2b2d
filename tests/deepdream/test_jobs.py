"""deepdream/jobs.py on one process: sharing by cost, what travels, resume by record, a failing item
alone, Ctrl-C saying what was kept, and the finished hook. (Several ranks: tests/test_dream_ranks.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepdream.errors import DreamError, Interrupted
from deepdream.image_io import encode_image, read_image_record
from deepdream.jobs import Item, Job, deal, pack, pack_arrays, run_job, unpack, unpack_arrays, units_of


def test_sharing_a_folder_of_mixed_sizes_keeps_every_rank_within_a_quarter_of_the_mean() -> None:
    """Photos from 0.3 to 12 MP (a phone's, a camera's, thumbnails), 2-8 ranks: the busiest rank's
    pixel-steps are at most 1.25x the mean rank's; and since every round waits for its largest item,
    the rounds' sum (the wall time) exceeds the mean by at most the largest item."""
    rng = np.random.default_rng(0)
    for count, ranks in ((12, 2), (24, 3), (40, 4), (64, 8)):
        costs = list(rng.choice([0.3, 2.0, 3.1, 8.0, 12.0], size=count) * rng.uniform(0.8, 1.2, count))
        queues = deal(costs, ranks)
        assert sorted(i for q in queues for i in q) == list(range(count))
        loads = [sum(costs[i] for i in q) for q in queues]
        mean = sum(costs) / ranks
        assert max(loads) <= 1.25 * mean, (count, ranks, loads)
        rounds = sum(max(costs[q[r]] for q in queues if r < len(q)) for r in range(max(map(len, queues))))
        assert rounds <= mean + max(costs)
    assert deal([5.0], 3) == [[0], [], []]  # one item: rank 0 makes it (its own progress bar shows)


def test_messages_carry_bytes_json_and_arrays_exactly() -> None:
    header, blobs = unpack(pack({"a": [1, 2]}, [b"", b"xyz", bytes(range(256))]))
    assert header == {"a": [1, 2]} and blobs == [b"", b"xyz", bytes(range(256))]
    arrays = [np.arange(12, dtype=np.uint8).reshape(2, 2, 3), np.full((1, 5), 0.5, np.float32)]
    for got, want in zip(unpack_arrays(pack_arrays(arrays)), arrays):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    items = [Item("a", ("x",), units=2), Item("b", ("y",))]
    assert units_of(items, [1, 0]) == [(1, 0), (0, 0), (0, 1)]


class Squares(Job):
    """Items 0..n-1, each a grey image of its own shade (item 'bad' fails)."""

    noun = "square"

    def __init__(self, folder: Path, names: list[str], shade: float = 0.5, fail_at: str | None = None) -> None:
        self.folder, self.names, self.shade, self.fail_at = folder, names, shade, fail_at
        self.made: list[str] = []

    def where(self) -> str:
        return str(self.folder)

    def items(self) -> list[Item]:
        return [Item(key=name, outputs=(str(self.folder / f"{name}.png"),), cost=1.0, label=name,
                     record={"shade": self.shade, "seed": 0}, spec={"name": name}) for name in self.names]

    def make(self, item: Item, unit: int, payload: bytes, progress: bool):
        if item.key == self.fail_at:
            raise DreamError(f"cannot read input image '{item.key}.png': the file is corrupt")
        self.made.append(item.key)
        return [(0, encode_image(np.full((4, 4, 3), self.shade, np.float32), item.outputs[0], item.record))]


def test_resume_skips_finished_items_and_refuses_other_settings(tmp_path: Path, capsys) -> None:
    job = Squares(tmp_path, ["a", "b", "c"])
    seen = []
    report = run_job(job, finished=seen.append)
    assert job.made == ["a", "b", "c"] and seen == [report]
    assert read_image_record(tmp_path / "a.png") == {"shade": 0.5, "seed": 0}
    description = report.description()  # what a page writer receives
    assert [i["status"] for i in description["items"]] == ["made"] * 3
    assert description["items"][0]["outputs"] == [{"path": str(tmp_path / "a.png"), "caption": "a"}]
    (tmp_path / "b.png").unlink()
    again = Squares(tmp_path, ["a", "b", "c"])
    report = run_job(again)
    assert again.made == ["b"] and [i.key for i in report.skipped] == ["a", "c"]
    with pytest.raises(DreamError, match=r"^'.*a.png' \(and 2 more\) was made with other settings \(--shade 0.5 -> "
                                         r"0.7\); add --overwrite"):
        run_job(Squares(tmp_path, ["a", "b", "c"], shade=0.7))
    other = Squares(tmp_path, ["a", "b", "c"], shade=0.7)
    other.overwrite = True
    run_job(other)
    assert other.made == ["a", "b", "c"]


def test_a_failing_item_fails_alone_and_the_job_says_so_at_the_end(tmp_path: Path, capsys) -> None:
    job = Squares(tmp_path, ["a", "bad", "c"], fail_at="bad")
    with pytest.raises(DreamError, match=r"^1 of 3 squares failed \(listed above\)"):
        run_job(job, notify=print)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "c.png"]
    out = capsys.readouterr()
    assert "squares: 2 made, 0 skipped (already made), 1 failed" in out.out
    assert "failed: cannot read input image 'bad.png': the file is corrupt" in out.err
    # One item that fails is the command's one error line, as a single dream's always was.
    with pytest.raises(DreamError, match=r"^cannot read input image 'bad.png'"):
        run_job(Squares(tmp_path, ["bad"], fail_at="bad"))


def test_ctrl_c_says_how_many_outputs_are_kept(tmp_path: Path, monkeypatch) -> None:
    import deepdream.image_io as image_io

    real = image_io.atomic_write
    calls = []

    def write_then_interrupt(path, write, **kwargs):  # Ctrl-C lands just after the first file is saved
        real(path, write, **kwargs)
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(image_io, "atomic_write", write_then_interrupt)
    with pytest.raises(Interrupted, match=r"^interrupted; 1 of 3 squares are in .*; run the same command to make"):
        run_job(Squares(tmp_path, ["a", "b", "c"]))
    monkeypatch.setattr(image_io, "atomic_write", real)
    with pytest.raises(KeyboardInterrupt, match="^$"):  # nothing kept: the scripts say "nothing was written"
        job = Squares(tmp_path / "none", ["a"])
        job.make = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt)
        run_job(job)


class Pairs(Squares):
    """Squares made two at a time (one item, two outputs), like a sweep's batch."""

    noun = "square"

    def items(self) -> list[Item]:
        return [Item(key=f"{a}+{b}", outputs=(str(self.folder / f"{a}.png"), str(self.folder / f"{b}.png")),
                     captions=(a, b), record={"shade": self.shade, "seed": 0})
                for a, b in zip(self.names[::2], self.names[1::2])]

    def make(self, item: Item, unit: int, payload: bytes, progress: bool):
        self.made.append(item.key)
        image = np.full((4, 4, 3), self.shade, np.float32)
        return [(k, encode_image(image, path, item.record)) for k, path in enumerate(item.outputs)]


def test_an_item_made_again_writes_only_its_missing_outputs(tmp_path: Path, capsys) -> None:
    run_job(Pairs(tmp_path, ["a", "b", "c", "d"]))
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    (tmp_path / "c.png").unlink()
    job = Pairs(tmp_path, ["a", "b", "c", "d"])
    report = run_job(job, notify=print)
    assert job.made == ["c+d"]                                   # the item is made whole...
    assert report.written == [tmp_path / "c.png"]                # ...and only its missing output written
    assert (tmp_path / "d.png").stat().st_mtime_ns == stamps["d.png"]
    assert "squares: 1 made, 3 skipped (already made), 0 failed" in capsys.readouterr().out


def test_a_jobs_notice_replaces_the_runners_line(tmp_path: Path) -> None:
    said = []
    job = Squares(tmp_path, ["a", "b"])
    job.notice = lambda todo, kept: f"{len(todo)} to make, {kept} kept"
    run_job(job, notify=said.append)
    (tmp_path / "a.png").unlink()
    run_job(Squares(tmp_path, ["a", "b"]), notify=said.append)
    assert said[0] == "2 to make, 0 kept" and said[2] == "1 square to make (1 already made)"


def test_ctrl_c_hands_the_page_writer_what_exists(tmp_path: Path) -> None:
    job = Pairs(tmp_path, ["a", "b", "c", "d", "e", "f"])
    real = job.make

    def make(item, unit, payload, progress):
        if item.key == "e+f":
            raise KeyboardInterrupt
        return real(item, unit, payload, progress)
    job.make = make
    seen = []
    with pytest.raises(Interrupted, match="4 of 6 squares"):
        run_job(job, finished=seen.append)
    report, = seen
    assert report.interrupted
    assert {i["key"]: (i["status"], [o["path"] for o in i["outputs"]]) for i in report.description()["items"]} == {
        "a+b": ("made", [str(tmp_path / "a.png"), str(tmp_path / "b.png")]),
        "c+d": ("made", [str(tmp_path / "c.png"), str(tmp_path / "d.png")]),
        "e+f": ("unfinished", [])}
