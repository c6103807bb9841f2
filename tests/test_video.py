import math
from pathlib import Path

import numpy as np
import pytest

from vadr1_lib.data.drawing import SPAN_FRACTION_RANGE
from vadr1_lib.data.video import (
    CorruptVideoError,
    VideoNotFoundError,
    covered_frames,
    head_tail_trim,
    load_clip,
    load_frames,
    read_video_info,
    release_frame_indices,
    sampled_fps,
    trimmed_frame_indices,
    uniform_frame_indices,
    write_video,
)
from vadr1_lib.parsing import parse_completion
from vadr1_lib.prompts import format_answer_abnormal

NUM_FRAMES, HEIGHT, WIDTH, FPS = 24, 48, 64, 8.0


def synthetic_frames(num_frames: int = NUM_FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A moving white square on a background whose colour differs in every frame, so a
    frame read back can be matched to the frame written."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frames[t] = (t * 10 % 256, 255 - t * 10 % 256, 128)
        frames[t, 10:20, 2 * t : 2 * t + 10] = 255
    return frames


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(synthetic_frames(), tmp_path_factory.mktemp("video") / "clip.mp4", FPS)


def test_written_video_reads_back_exact_metadata(clip_path: Path) -> None:
    info = read_video_info(clip_path)
    assert (info.num_frames, info.fps, info.width, info.height) == (NUM_FRAMES, FPS, WIDTH, HEIGHT)
    assert info.duration_s == 3.0
    assert info.path == clip_path


def test_written_video_reads_back_faithful_frames_at_the_right_index(clip_path: Path) -> None:
    written = synthetic_frames().astype(int)
    indices = [0, 5, 11, 12, 23, 5]
    frames = load_frames(clip_path, indices)
    assert frames.shape == (len(indices), HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    for row, index in enumerate(indices):
        errors = [np.abs(frames[row].astype(int) - written[t]).mean() for t in range(NUM_FRAMES)]
        assert errors[index] < 8
        assert int(np.argmin(errors)) == index


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_writing_is_deterministic(tmp_path: Path, suffix: str) -> None:
    frames = synthetic_frames()
    first = write_video(frames, tmp_path / f"a{suffix}", FPS).read_bytes()
    second = write_video(frames, tmp_path / f"b{suffix}", FPS).read_bytes()
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a{suffix}", f"b{suffix}"]  # no partial files left
    info = read_video_info(tmp_path / f"a{suffix}")
    assert (info.num_frames, info.fps) == (len(frames), FPS)


def test_odd_sizes_lose_their_last_row_and_column(tmp_path: Path) -> None:
    frames = synthetic_frames(8, 47, 63)
    info = read_video_info(write_video(frames, tmp_path / "odd.mp4", FPS))
    assert (info.height, info.width, info.num_frames) == (46, 62, 8)
    read = load_frames(info.path, [3])[0].astype(int)
    assert np.abs(read - frames[3, :46, :62]).mean() < 8


def test_write_video_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_video(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "x.mp4", FPS)
    with pytest.raises(ValueError, match=".mp4 or .avi"):
        write_video(synthetic_frames(2), tmp_path / "x.mkv", FPS)
    with pytest.raises(ValueError, match="fps"):
        write_video(synthetic_frames(2), tmp_path / "x.mp4", 0.0)


def test_load_clip_carries_the_sampled_rate(clip_path: Path) -> None:
    clip = load_clip(clip_path, release_frame_indices(NUM_FRAMES, FPS))
    assert clip.indices == [0, 5, 9, 14, 18, 23]
    assert clip.frames.shape == (6, HEIGHT, WIDTH, 3)
    assert clip.sample_fps == 2.0  # 6 frames over 3 seconds, qwen-vl-utils' n / N * fps
    assert clip.info.num_frames == NUM_FRAMES


def test_load_frames_rejects_out_of_range_indices(clip_path: Path) -> None:
    with pytest.raises(IndexError, match=r"\[24\]"):
        load_frames(clip_path, [0, 24])
    with pytest.raises(ValueError, match="empty"):
        load_frames(clip_path, [])


def test_sampled_fps() -> None:
    assert sampled_fps([0, 5, 9, 14, 18, 23], 8.0) == 2.0
    assert sampled_fps([7], 30.0) == 30.0
    assert sampled_fps([70, 80, 90, 99], 10.0) == 4 * 10.0 / 30


@pytest.mark.parametrize(
    ("num_frames", "fps", "expected"),
    [
        (24, 8.0, [0, 5, 9, 14, 18, 23]),  # 3 s -> 6 frames
        (795, 10.0, [0, 53, 106, 159, 212, 265, 318, 371, 423, 476, 529, 582, 635, 688, 741, 794]),  # capped at 16
        (30, 30.0, [0, 10, 19, 29]),  # 1 s -> 2 frames, raised to the minimum of 4
        (3, 30.0, [0, 2]),  # fewer frames than the minimum: all the video has, made even
        (105, 30.0, [0, 21, 42, 62, 83, 104]),  # 3.5 s -> 7 frames, rounded down to even
    ],
)
def test_release_frame_indices(num_frames: int, fps: float, expected: list[int]) -> None:
    assert release_frame_indices(num_frames, fps) == expected


def test_release_frame_indices_options_and_errors() -> None:
    assert release_frame_indices(300, 30.0, target_fps=1.0, max_frames=8) == [0, 43, 85, 128, 171, 214, 256, 299]
    with pytest.raises(ValueError, match="at least 2 frames"):
        release_frame_indices(1, 30.0)
    with pytest.raises(ValueError, match="positive"):
        release_frame_indices(100, 0.0)


def test_uniform_frame_indices() -> None:
    assert uniform_frame_indices(100, 4) == [0, 33, 66, 99]
    assert uniform_frame_indices(16, 16) == list(range(16))
    assert uniform_frame_indices(5, 8) == [0, 1, 1, 2, 2, 3, 3, 4]  # repeats when n > frames
    assert uniform_frame_indices(7, 1) == [0]
    with pytest.raises(ValueError):
        uniform_frame_indices(0, 4)


def test_trimmed_frame_indices_exact() -> None:
    # frame i lasts from i/10 to (i+1)/10: [0.2, 0.5] covers frames 2, 3, 4 (frame 5 starts at 0.5)
    assert trimmed_frame_indices(10, (0.2, 0.5), 6) == [0, 1, 5, 7, 8, 9]
    assert trimmed_frame_indices(10, (0.2, 0.5), 4) == [0, 5, 7, 9]
    assert trimmed_frame_indices(10, (0.0, 0.3), 2) == [3, 9]  # the first 30%: frames 0-2
    assert trimmed_frame_indices(10, (0.7, 1.0), 3) == [0, 3, 6]  # the last 30%: frames 7-9
    assert trimmed_frame_indices(10, (0.0, 0.85), 4) == [9, 9, 9, 9]  # frame 8 is half covered; one left: repeated
    assert trimmed_frame_indices(10, (0.2, 0.2004), 10) == list(range(10))  # less than rounding explains: nothing
    assert covered_frames(32, (0.688, 0.969)) == list(range(22, 31))  # Mini's exact span: frames 22-30, not 31


def test_the_exact_span_of_every_mini_anomaly_removes_exactly_its_frames() -> None:
    """Every span a 32-frame Mini clip can have (25-70% of its frames), written as the
    annotation writes <when> and read back by the parser: the trim removes exactly the
    anomaly's frames, so a perfect verifier sees none of it and all of the rest."""
    frames = 32
    shortest, longest = math.ceil(SPAN_FRACTION_RANGE[0] * frames), math.floor(SPAN_FRACTION_RANGE[1] * frames)
    for length in range(shortest, longest + 1):
        for first in range(frames - length + 1):
            written = format_answer_abnormal("Fire", "a fire starts", (first / frames, (first + length) / frames),
                                             "centre", "fire is dangerous", "damage")
            span = parse_completion(written, kind="direct").span
            kept = set(trimmed_frame_indices(frames, span, frames))
            assert kept == set(range(frames)) - set(range(first, first + length)), (first, length, span)


@pytest.mark.parametrize("span", [(0.113, 0.646), (0.0, 0.3), (0.7, 1.0), (0.5, 0.5), (0.25, 0.999)])
@pytest.mark.parametrize("num_frames", [17, 100, 795])
def test_trimmed_frame_indices_never_include_covered_frames(span: tuple[float, float], num_frames: int) -> None:
    indices = trimmed_frame_indices(num_frames, span, 16)
    assert len(indices) == 16
    assert indices == sorted(indices)
    covered = [i for i in range(num_frames) if span[0] + 0.0005 < (i + 1) / num_frames and i / num_frames < span[1] - 0.0005]
    assert not set(indices) & set(covered)
    assert all(0 <= i < num_frames for i in indices)


def test_trimmed_frame_indices_errors() -> None:
    with pytest.raises(ValueError, match="removes all"):
        trimmed_frame_indices(10, (0.0, 1.0), 4)
    with pytest.raises(ValueError, match="0 <= s <= e <= 1"):
        trimmed_frame_indices(10, (0.6, 0.2), 4)
    with pytest.raises(ValueError, match="0 <= s <= e <= 1"):
        trimmed_frame_indices(10, (-0.1, 0.2), 4)


def test_head_tail_trim() -> None:
    assert head_tail_trim(True) == (0.0, 0.3)
    assert head_tail_trim(False) == (0.7, 1.0)
    assert head_tail_trim(False, 0.25) == (0.75, 1.0)
    with pytest.raises(ValueError):
        head_tail_trim(True, 1.0)


def test_missing_video(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoNotFoundError, match="nope.mp4") as caught:
        read_video_info(missing)
    assert isinstance(caught.value, FileNotFoundError)
    with pytest.raises(VideoNotFoundError):
        load_frames(missing, [0])


def corrupt_variants(clip_path: Path, folder: Path) -> dict[str, Path]:
    data = clip_path.read_bytes()
    variants = {
        "zero.mp4": b"",
        "text.mp4": b"this is a text file, not a video\n" * 20,
        "first_half.mp4": data[: len(data) // 2],
        "no_last_byte.mp4": data[:-1],
        "headerless.mp4": data[100:],
    }
    for name, content in variants.items():
        (folder / name).write_bytes(content)
    return {name: folder / name for name in variants}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("zero.mp4", "zero-byte file"),
        ("text.mp4", "cannot be decoded"),
        ("first_half.mp4", "truncated: box 'mdat'"),
        ("no_last_byte.mp4", "truncated: box 'moov'"),
        ("headerless.mp4", "cannot be decoded"),
    ],
)
def test_corrupt_videos_raise_typed_errors(clip_path: Path, tmp_path: Path, name: str, reason: str) -> None:
    path = corrupt_variants(clip_path, tmp_path)[name]
    with pytest.raises(CorruptVideoError, match=reason) as caught:
        read_video_info(path)
    assert caught.value.path == path and name in str(caught.value)
    with pytest.raises(CorruptVideoError):
        load_frames(path, [0])


def test_truncated_avi_is_caught_by_its_riff_size(tmp_path: Path) -> None:
    # The RIFF header is read before decord sees the file; a minimal header suffices.
    path = tmp_path / "cut.avi"
    path.write_bytes(b"RIFF" + (10_000).to_bytes(4, "little") + b"AVI " + b"\0" * 100)
    with pytest.raises(CorruptVideoError, match="truncated: RIFF header says 10008 bytes, file has 112"):
        read_video_info(path)
