"""dream_video.py: the zoom feedback video, on efficientnet_lite0's real weights at tiny sizes.

The MP4 is decoded with a real decoder (PyAV) and checked for codec, pixel format, size and
frame count, and for motion: with dreaming switched off (--lr 0) consecutive frames must be
related by a zoom about the centre, at the scale asked for. Resume is checked byte for byte
against an uninterrupted run, and Ctrl-C by sending SIGINT to a real process.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import dream_video
from deepdream.cli.args import DreamArgumentParser, add_render_arguments
from deepdream.cli.settings import settings_for_model
from deepdream.errors import DreamError
from deepdream.presets import PRESETS
from deepdream.video.modes import FRAME_DEFAULTS
from deepdream.video.store import SETTINGS_FILE, count_frames
from deepdream.video.zoom import Motion, move, next_frame
from tests.pages import check_site, read_page

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "dream_video.py"
# Tiny frames, one octave, two steps: each frame is a real dream that takes a fraction of a second.
TINY = ["--model", "efficientnet_lite0", "--octaves", "1", "--steps", "2", "--quiet"]
NOISE = ["--width", "64", "--height", "64", "--seed", "7"]


@pytest.fixture(scope="module")
def lite0(weights_dir: Path):
    """efficientnet_lite0's real ImageNet weights, converted into the test weights folder once."""
    import models

    from convert import make_default_weights  # the scripts' first-run conversion

    make_default_weights("efficientnet_lite0")
    return models.load_model("efficientnet_lite0")


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=os.environ.copy())


def pattern(height: int, width: int) -> np.ndarray:
    """Smooth rings and colour ramps: every region distinct, nothing aliased by bilinear resampling."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot(y - height * 0.42, x - width * 0.57)
    return np.stack([0.5 + 0.4 * np.sin(r / 3.0), 0.2 + 0.6 * x / width, 0.2 + 0.6 * y / height], axis=2)


def save_png(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def decode_mp4(path: Path) -> tuple[list[np.ndarray], dict[str, object]]:
    """Every frame (float RGB) and the stream's codec, pixel format, size and frame rate, decoded by FFmpeg."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {"codec": stream.codec_context.name, "pix_fmt": stream.codec_context.pix_fmt,
                "width": stream.codec_context.width, "height": stream.codec_context.height,
                "rate": stream.average_rate}
        frames = [f.to_ndarray(format="rgb24").astype(np.float32) / 255.0 for f in container.decode(video=0)]
    return frames, info


def estimate_zoom(before: np.ndarray, after: np.ndarray, centre: tuple[float, float]) -> float:
    """The scale s (zoom in or out) for which ``after`` best matches ``before`` scaled by s about ``centre``.

    The candidates come from Pillow's own affine resampling, not from the code under test, and
    the search covers zoom-out as well as zoom-in, so finding s > 1 means content really moves
    outward from the centre.
    """
    h, w = after.shape[:2]
    cy, cx = (c + 0.5 for c in centre)  # Pillow measures from pixel edges, numpy from pixel centres
    src = Image.fromarray((np.clip(before, 0, 1) * 255 + 0.5).astype(np.uint8))
    m = max(2, int(0.15 * min(h, w)))  # ignore the rim, where uncovered borders are filled differently
    best, best_err = 0.0, np.inf
    for s in np.arange(0.80, 1.30, 0.0025):
        inv = 1.0 / s  # output pixel o shows input c + (o - c) / s
        data = (inv, 0.0, cx - inv * cx, 0.0, inv, cy - inv * cy)
        guess = np.asarray(src.transform((w, h), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR),
                           dtype=np.float32) / 255.0
        err = float(np.abs(guess[m:-m, m:-m] - after[m:-m, m:-m]).mean())
        if err < best_err:
            best, best_err = float(s), err
    return best


# -- the move, without a model --------------------------------------------------------------------

def test_move_zooms_about_the_centre_and_keeps_the_size() -> None:
    img = pattern(61, 80).astype(np.float32)
    out = move(img, Motion(zoom=1.2))
    assert out.shape == img.shape and out.dtype == np.float32
    assert estimate_zoom(img, out, (30.0, 39.5)) == pytest.approx(1.2, abs=0.003)
    # A pixel off centre moves outward by the zoom factor; the centre stays put.
    dot = np.zeros((41, 41, 3), np.float32)
    dot[20, 30] = 1.0  # 10 px right of centre
    moved = move(dot, Motion(zoom=1.5))
    assert np.unravel_index(np.argmax(moved[..., 0]), moved.shape[:2]) == (20, 35)
    zoomed_out = move(img, Motion(zoom=0.8))
    assert estimate_zoom(img, zoomed_out, (30.0, 39.5)) == pytest.approx(0.8, abs=0.003)


def test_move_rotates_counter_clockwise_and_translates_right_and_down() -> None:
    dot = np.zeros((41, 41, 3), np.float32)
    dot[20, 30] = 1.0  # right of centre
    turned = move(dot, Motion(zoom=1.0, rotate=90.0))
    assert np.unravel_index(np.argmax(turned[..., 0]), (41, 41)) == (10, 20)  # now above centre
    shifted = move(dot, Motion(zoom=1.0, translate=(3.0, -2.0)))
    assert np.unravel_index(np.argmax(shifted[..., 0]), (41, 41)) == (18, 33)
    assert np.array_equal(move(dot, Motion(zoom=1.0)), dot)  # no motion, no resampling


def test_next_frame_blends_the_moved_frame_with_its_dream() -> None:
    """frame n+1 = blend * moved + (1 - blend) * dream(moved), rounded to what the PNG stores,
    with the dream's jitter generator seeded from (seed, n) alone."""
    seen = []

    def fake_dream(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seen.append(int(rng.integers(1 << 30)))
        return 1.0 - image  # any change that is easy to predict

    previous = pattern(33, 40).astype(np.float32)
    motion = Motion(zoom=1.1, rotate=5.0, translate=(1.5, -1.0), blend=0.25)
    out = next_frame(previous, previous, 7, fake_dream, motion, seed=3)
    moved = move(previous, motion)
    expected = 0.25 * moved + 0.75 * (1.0 - moved)
    assert np.abs(out - expected).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(out * 255, np.round(out * 255))  # exactly 8-bit values
    again = next_frame(previous, previous, 7, fake_dream, motion, seed=3)
    next_frame(previous, previous, 8, fake_dream, motion, seed=3)  # a third call with another frame index
    assert np.array_equal(out, again) and seen[0] == seen[1] != seen[2]
    first = next_frame(None, previous, 0, fake_dream, motion, seed=3)  # frame 0: the start's dream, unmoved
    assert np.abs(first - (1.0 - previous)).max() <= 0.5 / 255 + 1e-6
    kept = next_frame(previous, previous, 1, fake_dream, Motion(zoom=1.1, blend=1.0), seed=3)
    assert np.abs(kept - move(previous, Motion(zoom=1.1))).max() <= 0.5 / 255 + 1e-6


def test_every_dream_flag_comes_from_the_shared_definition() -> None:
    import dream

    def options(parser) -> set[str]:
        return {s for a in parser._actions for s in a.option_strings}

    # Renders from noise (--class, --sweep, ...) are stills only: dream.py's own group.
    render_only = DreamArgumentParser()
    add_render_arguments(render_only)
    # --overwrite is the rule for existing images; a video's frames folder has its own, --restart.
    still = options(dream.build_parser()) - (options(render_only) - {"-h", "--help"}) - {"--overwrite"}
    video = options(dream_video.build_parser())
    assert still <= video, f"dream.py flags missing from dream_video.py: {sorted(still - video)}"
    for flag in ("--frames", "--zoom", "--rotate", "--translate", "--blend", "--fps", "--restart"):
        assert flag in video


def test_frame_defaults_give_way_to_preset_and_flags(lite0) -> None:
    def resolved(*argv: str):
        args = dream_video.build_parser().parse_args(["--model", "efficientnet_lite0", *argv])
        return settings_for_model(args, lite0, lambda message: None, over_recipe=FRAME_DEFAULTS)

    recipe = PRESETS["efficientnet_lite0"]
    assert (recipe.octaves, recipe.steps) != (FRAME_DEFAULTS["octaves"], FRAME_DEFAULTS["steps"])
    plain = resolved()
    assert (plain.octaves, plain.steps) == (FRAME_DEFAULTS["octaves"], FRAME_DEFAULTS["steps"])  # over the recipe
    assert plain.layers == recipe.layers and plain.lr == recipe.lr  # the recipe's other values still apply
    preset = resolved("--preset", "efficientnet_lite0")
    assert (preset.octaves, preset.steps) == (recipe.octaves, recipe.steps)  # an explicit preset wins
    flags = resolved("--preset", "efficientnet_lite0", "--steps", "3")
    assert (flags.octaves, flags.steps) == (recipe.octaves, 3)  # and an explicit flag wins over both


# -- output ----------------------------------------------------------------------------------------

def test_mp4_decodes_with_the_right_frames_and_moves_like_a_zoom(lite0, tmp_path: Path) -> None:
    """--lr 0 switches dreaming off: what remains is the zoom, which the decoded video must show."""
    height, width = 75, 97  # odd sides: the MP4 drops the last row and column (yuv420p needs even)
    start = save_png(tmp_path / "rings.png", pattern(height, width))
    out = tmp_path / "zoom.mp4"
    assert dream_video.main([*TINY, "--input", str(start), "--frames", "4", "--zoom", "1.1", "--lr", "0",
                             "--fps", "10", "--output", str(out)]) == 0
    frames, info = decode_mp4(out)
    assert info == {"codec": "h264", "pix_fmt": "yuv420p", "width": 96, "height": 74, "rate": 10}
    assert len(frames) == 4
    pngs = [np.asarray(Image.open(tmp_path / "zoom_frames" / f"{i:05d}.png"), np.float32) / 255 for i in range(4)]
    assert all(p.shape == (height, width, 3) for p in pngs)  # the frames keep the input's size exactly
    for png, decoded in zip(pngs, frames):  # the video holds these frames, in this order
        assert np.abs(png[:74, :96] - decoded).mean() < 0.02
    centre = ((height - 1) / 2, (width - 1) / 2)  # the zoom centre, in the (cropped) video too
    for before, after in zip(frames, frames[1:]):
        assert estimate_zoom(before, after, centre) == pytest.approx(1.1, abs=0.011)
        assert np.abs(after - before).mean() > 0.05  # it really moves


def test_gif_output_has_every_frame(lite0, tmp_path: Path) -> None:
    out = tmp_path / "loop.gif"
    assert dream_video.main([*TINY, *NOISE, "--frames", "3", "--fps", "5", "--output", str(out)]) == 0
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.size == (64, 64) and gif.n_frames == 3
        assert gif.info["duration"] == 200 and gif.info["loop"] == 0
        gif.seek(2)
        last = np.asarray(gif.convert("RGB"), np.float32) / 255
    png = np.asarray(Image.open(tmp_path / "loop_frames" / "00002.png"), np.float32) / 255
    assert np.abs(last - png).mean() < 0.03  # 256-colour quantisation only
    frame0 = np.asarray(Image.open(tmp_path / "loop_frames" / "00000.png"), np.float32) / 255
    assert np.abs(last - frame0).mean() > 0.01  # the frames change: it is an animation


# -- resume ----------------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def uninterrupted(lite0, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("whole")
    assert dream_video.main([*TINY, *NOISE, "--frames", "4", "--output", str(folder / "v.mp4")]) == 0
    return folder / "v_frames"


def test_video_page_shows_the_poster_the_player_and_the_command(uninterrupted: Path) -> None:
    """<output stem>.html beside the video: a frame from its middle as the poster of a player that needs
    no script, and the command that made it (which parses back to the same flags)."""
    page_path = uninterrupted.parent / "v.html"
    page = check_site(page_path)[page_path.resolve()]
    assert [s.get("src") for s in page.sources] == ["v.mp4"]
    player = next(page.root.iter("video"))
    assert player.get("controls") is not None and (page_path.parent / player.get("poster")).is_file()
    poster = next(a.get("href") for a in page.links if a.get("href").endswith(".html"))
    assert read_page((page_path.parent / poster).resolve()).images == []   # the picture page shows the player
    command = shlex.split(page.text("code")[0])
    parser = dream_video.build_parser()
    assert command[:2] == ["python", "dream_video.py"]
    given = [*TINY, *NOISE, "--frames", "4", "--output", str(uninterrupted.parent / "v.mp4")]
    assert parser.parse_args(command[2:]) == parser.parse_args([a for a in given if a != "--quiet"])
    assert ("model", "efficientnet_lite0") in [tuple(td.text for td in tr) for tr in page.root.iter("tr")]


def test_resume_continues_exactly_and_extends(uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    frames = tmp_path / "v_frames"
    assert dream_video.main([*TINY, *NOISE, "--frames", "2", "--output", str(out)]) == 0
    assert count_frames(frames) == 2 and len(decode_mp4(out)[0]) == 2
    first = snapshot(frames)
    time.sleep(0.01)
    assert dream_video.main([*TINY, *NOISE, "--frames", "4", "--output", str(out)]) == 0
    after = snapshot(frames)
    assert all(after[name] == first[name] for name in first)  # bytes and mtime: not rewritten
    whole = snapshot(uninterrupted)
    assert [after[n][0] for n in sorted(after)] == [whole[n][0] for n in sorted(whole)]  # = uninterrupted run
    assert len(decode_mp4(out)[0]) == 4
    # Raising --frames extends the same video.
    assert dream_video.main([*TINY, *NOISE, "--frames", "5", "--output", str(out)]) == 0
    extended = snapshot(frames)
    assert len(extended) == 5 and all(extended[n] == after[n] for n in after)
    assert len(decode_mp4(out)[0]) == 5


def test_changed_settings_are_refused_unless_restart(uninterrupted: Path, tmp_path: Path) -> None:
    shutil.copytree(uninterrupted, tmp_path / "v_frames")
    out = tmp_path / "v.mp4"
    before = snapshot(tmp_path / "v_frames")
    result = run_cli([*TINY[:-1], "--steps", "3", *NOISE, "--frames", "6", "--output", str(out)], cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert "--steps 2 -> 3" in lines[0] and "--restart" in lines[0]
    with pytest.raises(DreamError, match=r"--zoom 1.05 -> 1.2"):
        dream_video.main([*TINY, *NOISE, "--frames", "6", "--zoom", "1.2", "--output", str(out)])
    assert snapshot(tmp_path / "v_frames") == before and not out.exists()
    # --restart throws the old frames away and starts over with the new settings.
    assert dream_video.main([*TINY, "--steps", "1", *NOISE, "--frames", "2", "--restart", "--output", str(out)]) == 0
    assert count_frames(tmp_path / "v_frames") == 2
    assert (tmp_path / "v_frames" / "00000.png").read_bytes() != before["00000.png"][0]
    assert '"steps": 1' in (tmp_path / "v_frames" / SETTINGS_FILE).read_text()


def test_ctrl_c_keeps_finished_frames_and_the_next_run_continues(uninterrupted: Path, tmp_path: Path,
                                                                terminal_sigint) -> None:
    out = tmp_path / "v.mp4"
    frames = tmp_path / "v_frames"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *TINY, *NOISE, "--frames", "60", "--output", str(out)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Two finished frames: every kernel is built (a new machine builds them first, which can take
    # minutes on a busy one), and 58 frames of work remain.
    deadline = time.monotonic() + 900
    while not (frames / "00001.png").exists():
        assert proc.poll() is None, proc.communicate()
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no second frame after 900 s")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    done = count_frames(frames)
    assert 2 <= done < 60 and "Traceback" not in stderr
    assert lines == [f"error: interrupted; {done} of 60 frames are saved in {frames}; run the same command again "
                     "to continue and write the video"]
    assert not out.exists()
    assert not [p.name for p in tmp_path.rglob(".*")]  # no temporary file left behind
    kept = snapshot(frames)
    whole = snapshot(uninterrupted)
    assert all(kept[n][0] == whole[n][0] for n in kept if n in whole)  # the same frames as an uninterrupted run
    assert dream_video.main([*TINY, *NOISE, "--frames", str(done + 1), "--output", str(out)]) == 0
    resumed = snapshot(frames)
    assert len(resumed) == done + 1 and all(resumed[n] == kept[n] for n in kept)
    assert len(decode_mp4(out)[0]) == done + 1


def test_a_training_checkpoint_dreams_as_its_model(lite0, tmp_path: Path) -> None:
    """A train_dream.py checkpoint given to --weights (once a TypeError traceback) makes the video."""
    from tests.test_train_dream import make_checkpoint

    checkpoint = make_checkpoint(tmp_path)
    out = tmp_path / "zoom.mp4"
    result = run_cli(["--weights", str(checkpoint), *TINY[2:], *NOISE, "--frames", "2", "--output", str(out)],
                     cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert len(decode_mp4(out)[0]) == 2


# -- bad input ---------------------------------------------------------------------------------------

BAD = {
    "zoom zero": (["--zoom", "0"], "--zoom must be a positive number"),
    "zoom negative": (["--zoom", "-1.05"], "--zoom must be a positive number"),
    "blend above 1": (["--blend", "1.5"], "--blend must be between 0 and 1"),
    "blend negative": (["--blend", "-0.1"], "--blend must be between 0 and 1"),
    "no frames": (["--frames", "0"], "--frames must be at least 1"),
    "fps zero": (["--fps", "0"], "--fps must be a positive number"),
    "zoom not a number": (["--zoom", "big"], "'big' is not a number"),
    "translate one value": (["--translate", "3"], "--translate: expected 2 arguments"),
    "unknown extension": (["--output", "{tmp}/movie.avi"], "unknown video extension '.avi'; use .mp4"),
    "output is a folder": (["--output", "{tmp}"], "is a folder"),
    "unwritable output": (["--output", "{tmp}/blocker/movie.mp4"], "cannot write into"),
    "frames folder is a file": (["--output", "{tmp}/clash.mp4"], "the frames folder"),
    "missing input": (["--input", "{tmp}/nope.png"], "input image '{tmp}/nope.png' not found"),
    "size with input": (["--input", "{tmp}/start.png", "--width", "64"], "with --input use --max-size"),
    "engine check": (["--steps", "0"], "--steps must be at least 1"),
    "model all": (["--model", "all"], "--model all is not supported for videos"),
    "negative seed": (["--seed", "-3"], "--seed must be between 0"),
    "too small for the model": (["--width", "20", "--height", "20"], "needs at least 32 px"),
}


#: These run as real processes (exit status, stderr, no traceback); the others through the same
#: ``run_main`` wrapper in this process, which is the script's whole error path minus the start-up.
SUBPROCESS_CASES = {"zoom zero", "blend above 1", "unknown extension", "unwritable output", "zoom not a number",
                    "too small for the model"}


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    from deepdream.errors import run_main

    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: dream_video.main(argv))
    captured = capsys.readouterr()
    return int(exit_info.value.code), captured.out, captured.err


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_one_line_error(case: str, lite0, tmp_path: Path, capsys) -> None:
    argv, expected = BAD[case]
    (tmp_path / "blocker").write_text("a file where a folder should be")
    (tmp_path / "clash_frames").write_text("a file where the frames folder should be")
    save_png(tmp_path / "start.png", pattern(40, 40))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    defaults = {"--model": "efficientnet_lite0", "--output": str(tmp_path / "out.mp4"), "--frames": "2"}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    argv.append("--quiet")
    if case in SUBPROCESS_CASES:
        result = run_cli(argv, cwd=tmp_path, timeout=120)
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    else:
        code, stdout, stderr = run_in_process(argv, capsys)
    assert code in (1, 2), stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected.replace("{tmp}", str(tmp_path)) in lines[0]
    assert "Traceback" not in stderr and stdout == ""
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert after == before  # nothing written: no video, no frames, no settings file
