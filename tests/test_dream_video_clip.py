"""dream_video.py --video: dreaming every frame of a clip, on efficientnet_lite0's real weights
(the flow itself: tests/deepdream/test_flow.py).

The clips are made with PyAV (benchmarks/clips.py): a photo panning by a known number of pixels
per frame (so the motion-compensated flicker can be measured exactly), with an AAC track; a
rotated phone clip; a variable-frame-rate Matroska clip; VP9, HEVC and ProRes clips. Outputs are decoded with FFmpeg and checked for
frame count, size, timestamps and sound.
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import dream_video
from benchmarks.clips import FPS, PAN, SAMPLE_RATE, pan_frames, write_clip
from deepdream.errors import DreamError, Interrupted
from deepdream.video.store import SETTINGS_FILE, count_frames
from tests.pages import check_site

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "dream_video.py"
LITE0 = ["--model", "efficientnet_lite0", "--quiet"]
#: Frames copied, not dreamed (--blend 1 keeps none of the dream): for decoding and timing checks.
COPY = [*LITE0, "--blend", "1"]
FRAMES = 16


@pytest.fixture(scope="module")
def lite0(weights_dir: Path) -> Path:
    """efficientnet_lite0's real ImageNet weights, converted into the test weights folder before the
    scripts run (so no conversion notice reaches the error tests' stderr)."""
    from convert import make_default_weights

    return make_default_weights("efficientnet_lite0")


def decode(path: Path) -> tuple[list[np.ndarray], dict[str, object]]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info: dict[str, object] = {"width": video.codec_context.width, "height": video.codec_context.height,
                                   "rate": video.average_rate, "audio": [s.codec_context.name
                                                                         for s in container.streams.audio]}
        frames, times = [], []
        for frame in container.decode(video):
            frames.append(frame.to_ndarray(format="rgb24").astype(np.float32) / 255)
            times.append(frame.time)
        info["times"] = times
    return frames, info


def audio_seconds(path: Path) -> float:
    """The audio track's length: the sum of its packets' durations (what a player plays)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return float(sum(p.duration for p in container.demux(stream) if p.pts is not None) * stream.time_base)


def flicker(frames: list[np.ndarray], step: int = PAN, margin: int = 16) -> float:
    """Mean |out_t - out_t-1 moved by the known motion| over the interior."""
    inner = slice(margin, -margin)
    return float(np.mean([np.abs(b[inner, margin:-margin - step] - a[inner, margin + step:-margin]).mean()
                          for a, b in zip(frames, frames[1:])]))


# -- a whole clip -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pan_clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "pan.mp4", pan_frames(FRAMES))


def test_a_dreamed_clip_keeps_its_frames_rate_and_sound_and_the_flow_stops_the_flicker(
        lite0, pan_clip: Path, tmp_path: Path) -> None:
    flowing, alone = tmp_path / "flow.mp4", tmp_path / "alone.mp4"
    # One octave of three stronger steps: a frame in a fraction of a second, as visible as the default dream.
    quick = ["--video", str(pan_clip), *LITE0, "--octaves", "1", "--steps", "3", "--lr", "0.14", "--seed", "1"]
    assert dream_video.main([*quick, "--output", str(flowing)]) == 0
    assert dream_video.main([*quick, "--no-flow", "--output", str(alone)]) == 0
    source, source_info = decode(pan_clip)
    out, info = decode(flowing)
    assert len(out) == FRAMES and (info["width"], info["height"]) == (256, 192) and info["rate"] == FPS
    assert info["times"] == source_info["times"]
    assert info["audio"] == ["aac"] and audio_seconds(flowing) == audio_seconds(pan_clip)
    change = np.mean([np.abs(o - i).mean() for o, i in zip(out, source)])
    assert change >= 8 / 255  # the dream is there
    with_flow, without = flicker(out), flicker(decode(alone)[0])
    assert with_flow <= 0.6 * without, (with_flow, without)


def test_a_clip_resumes_exactly_refuses_changed_settings_and_gets_its_page(lite0, pan_clip: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    import deepdream.video.clip as video_input

    quick = ["--video", str(pan_clip), *LITE0, "--octaves", "1", "--steps", "2", "--end", "0.5", "--seed", "3"]
    whole = tmp_path / "whole.mp4"
    assert dream_video.main([*quick, "--output", str(whole)]) == 0
    part = tmp_path / "part.mp4"
    calls = []
    real_carry = video_input.carry

    def stop_at_frame_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_carry(*args, **kwargs)

    monkeypatch.setattr(video_input, "carry", stop_at_frame_3)
    with pytest.raises(Interrupted, match=r"3 of 6 frames are saved"):
        dream_video.main([*quick, "--output", str(part)])
    monkeypatch.setattr(video_input, "carry", real_carry)
    assert count_frames(tmp_path / "part_frames") == 3 and not part.exists()
    assert not (tmp_path / "part.html").exists()   # a page only beside a whole video
    with pytest.raises(DreamError, match=r"--flow-blend 0.8 -> 0.5.*--restart"):
        dream_video.main([*quick, "--flow-blend", "0.5", "--output", str(part)])
    assert dream_video.main([*quick, "--output", str(part)]) == 0
    # The clip's page, from the job's report: its poster (a frame from the middle) and player.
    page = check_site(tmp_path / "part.html")[(tmp_path / "part.html").resolve()]
    assert [source.get("src") for source in page.sources] == ["part.mp4"]
    assert "--video" in page.text("code")[0]
    for i in range(6):
        name = f"{i:05d}.png"
        assert (tmp_path / "part_frames" / name).read_bytes() == (tmp_path / "whole_frames" / name).read_bytes()
    assert '"flow_blend": 0.8' in (tmp_path / "part_frames" / SETTINGS_FILE).read_text()
    assert dream_video.main([*quick, "--flow-blend", "0.5", "--restart", "--output", str(part)]) == 0
    assert '"flow_blend": 0.5' in (tmp_path / "part_frames" / SETTINGS_FILE).read_text()


def test_rotation_metadata_turns_the_frames_upright(lite0, tmp_path: Path) -> None:
    """A phone clip: landscape pixels with a display matrix saying 'turn 90 degrees clockwise'."""
    coded = np.zeros((64, 96, 3), np.uint8)
    coded[:16, :24] = (255, 0, 0)  # a red block at the top left of the stored pixels
    clip = write_clip(tmp_path / "phone.mp4", [coded] * 3, rotation=-90, audio=None)
    out = tmp_path / "upright.mp4"
    assert dream_video.main(["--video", str(clip), *COPY, "--output", str(out)]) == 0
    frames, info = decode(out)
    assert (info["width"], info["height"]) == (64, 96)
    expected = np.rot90(coded, k=-1).astype(np.float32) / 255  # clockwise: the block goes to the top right
    assert np.abs(frames[0] - expected).mean() < 0.02
    assert frames[0][:20, -12:, 0].mean() > 0.8 and frames[0][:20, :12, 0].mean() < 0.2


def test_max_size_start_end_and_variable_frame_rate(lite0, tmp_path: Path) -> None:
    pts = [0, 100, 250, 300, 500, 530, 800, 900]  # milliseconds, irregular
    frames = pan_frames(len(pts), width=128, height=96)
    clip = write_clip(tmp_path / "vfr.mkv", frames, pts=pts, time_base=Fraction(1, 1000), audio_seconds=1.0)
    out = tmp_path / "part.mp4"
    assert dream_video.main(["--video", str(clip), *COPY, "--start", "0.2", "--end", "0.6", "--max-size", "64",
                             "--output", str(out)]) == 0
    decoded, info = decode(out)
    assert (info["width"], info["height"]) == (64, 48) and len(decoded) == 4
    assert [round(float(t), 3) for t in info["times"]] == [0.0, 0.05, 0.25, 0.28]  # 250, 300, 500, 530 ms
    assert abs(audio_seconds(out) - 0.35) < 0.07  # 0.25 s .. 0.6 s, cut on packet boundaries
    first = np.asarray(Image.fromarray(frames[2]).resize((64, 48), Image.Resampling.LANCZOS), np.float32) / 255
    assert np.abs(decoded[0] - first).mean() < 0.03  # the frame at 250 ms comes first


@pytest.mark.parametrize(("name", "codec", "pix_fmt", "audio"), [
    ("vp9.webm", "libvpx-vp9", "yuv420p", "libopus"),
    ("hevc.mkv", "libx265", "yuv420p", None),
    ("prores.mov", "prores_ks", "yuv422p10le", None),
])
def test_clips_in_other_codecs_and_containers(name: str, codec: str, pix_fmt: str, audio: str | None, lite0,
                                              tmp_path: Path) -> None:
    frames = pan_frames(3, 64, 48)
    clip = write_clip(tmp_path / name, frames, codec=codec, pix_fmt=pix_fmt, audio=audio)
    out = tmp_path / "out.mp4"
    assert dream_video.main(["--video", str(clip), *COPY, "--output", str(out)]) == 0
    decoded, info = decode(out)
    assert len(decoded) == 3 and (info["width"], info["height"]) == (64, 48)
    assert info["audio"] == (["opus"] if audio else [])
    for got, want in zip(decoded, frames):
        assert np.abs(got - want / 255).mean() < 0.03


def test_gif_output_keeps_the_timing_and_drops_the_sound(lite0, pan_clip: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pan.gif"
    assert dream_video.main(["--video", str(pan_clip), "--model", "efficientnet_lite0", "--blend", "1",
                             "--end", "0.3", "--output", str(out)]) == 0
    assert ".gif holds no sound" in capsys.readouterr().err
    with Image.open(out) as gif:
        assert gif.n_frames == 4
        durations = []
        for i in range(4):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert durations == [80, 90, 80, 80]  # 1/12 s each in the 10 ms steps of GIF, adding up to 4/12 s


def test_the_sound_is_left_out_on_request(lite0, pan_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "silent.mkv"
    assert dream_video.main(["--video", str(pan_clip), *COPY, "--end", "0.2", "--no-audio", "--output", str(out)]) == 0
    assert decode(out)[1]["audio"] == []


# -- bad input ---------------------------------------------------------------------------------------

def make_bad_files(folder: Path) -> None:
    (folder / "notes.mp4").write_text("this is not a video")
    write_clip(folder / "short.mp4", pan_frames(3, 64, 48), audio=None)
    # Only sound: an MP4 with an AAC track and no video stream.
    with av.open(str(folder / "song.m4a"), mode="w", format="mp4") as container:
        sound = container.add_stream("aac", rate=SAMPLE_RATE)
        sound.layout = "mono"
        for k in range(0, SAMPLE_RATE, 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, k
            for packet in sound.encode(frame):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
    # A clip whose frames were wiped: the container and the codec's headers are fine, no frame decodes.
    write_clip(folder / "fine.mp4", pan_frames(3, 64, 48), audio=None)
    with av.open(str(folder / "fine.mp4")) as src, av.open(str(folder / "wiped.mp4"), mode="w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.pts is not None:
                wiped = av.Packet(bytes(packet.size))
                wiped.pts, wiped.dts, wiped.time_base, wiped.stream = packet.pts, packet.dts, packet.time_base, stream
                dst.mux(wiped)
    (folder / "fine.mp4").unlink()
    (folder / "empty.mp4").write_bytes(b"")
    # 8-bit PCM sound, which Matroska holds and MP4 cannot.
    write_clip(folder / "pcm.mkv", pan_frames(3, 64, 48), audio="pcm_u8")


BAD = {
    "not a video": (["--video", "{tmp}/notes.mp4"], "cannot read video '{tmp}/notes.mp4': not a video FFmpeg knows"),
    "no video stream": (["--video", "{tmp}/song.m4a"], "has no video stream (it holds audio)"),
    "unreadable stream": (["--video", "{tmp}/wiped.mp4"], "cannot decode the video stream of '{tmp}/wiped.mp4' "
                                                         "(codec h264"),
    "start past the end": (["--video", "{tmp}/short.mp4", "--start", "5"], "--start 5 is past the end"),
    "end before start": (["--video", "{tmp}/short.mp4", "--start", "2", "--end", "1"], "--end 1 is not after --start 2"),
    "audio the container cannot hold": (["--video", "{tmp}/pcm.mkv"], "cannot hold the sound of '{tmp}/pcm.mkv' "
                                                                      "(pcm_u8 audio"),
    "unknown extension": (["--video", "{tmp}/short.mp4", "--output", "{tmp}/out.avi"], "unknown video extension '.avi'"),
    "missing video": (["--video", "{tmp}/nope.mp4"], "video '{tmp}/nope.mp4' not found"),
    "a video given to --input": (["--input", "{tmp}/short.mp4"], "is a video, not an image; dream its frames with "
                                                                "`python dream_video.py --video {tmp}/short.mp4`"),
    "text named like a video given to --input": (["--input", "{tmp}/notes.mp4"], "not an image format"),
    "empty video": (["--video", "{tmp}/empty.mp4"], "video '{tmp}/empty.mp4' is an empty file (0 bytes)"),
    "zoom flag with a clip": (["--video", "{tmp}/short.mp4", "--zoom", "1.1"], "--zoom is for the zoom video"),
    "clip flag without a clip": (["--no-flow"], "--no-flow is for dreaming a clip; add --video"),
    "flow blend above 1": (["--video", "{tmp}/short.mp4", "--flow-blend", "1.5"], "--flow-blend must be between 0 and 1"),
    "negative start": (["--video", "{tmp}/short.mp4", "--start", "-1"], "--start must be a time in seconds"),
}
SUBPROCESS_CASES = {"not a video", "unreadable stream", "end before start", "audio the container cannot hold"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_one_line_error_before_anything_is_written(case: str, lite0, tmp_path: Path, capsys) -> None:
    from deepdream.errors import run_main

    make_bad_files(tmp_path)
    argv, expected = BAD[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out.mp4")]
    argv += LITE0
    before = sorted(p.name for p in tmp_path.rglob("*"))
    if case in SUBPROCESS_CASES:
        result = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    else:
        with pytest.raises(SystemExit) as exit_info:
            run_main(lambda: dream_video.main(argv))
        code = int(exit_info.value.code)
        captured = capsys.readouterr()
        stdout, stderr = captured.out, captured.err
    assert code in (1, 2), stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected.replace("{tmp}", str(tmp_path)) in lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
