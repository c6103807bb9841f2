"""Video files: reading with decord, frame sampling as the release does, trimming, writing.

Everything that turns a video file into model input goes through here, so that training,
the AVA verification re-query and inference sample frames the same way.

Reading (decord). Bad files must give a typed error that names the path, never a decord
traceback. Probing decord 0.6.0 found no crash or hang on empty, text, truncated or
byte-fuzzed files, so files are read in-process; but decord's answers on broken files are
not enough on their own: a truncated MP4 whose index ('moov') sits at the front opens
fine and silently reports fewer frames, and a truncated AVI decodes with damaged frames.
So `read_video_info` first checks the container structure where that is cheap (ISO-BMFF
boxes for .mp4/.mov, the RIFF size for .avi: a file shorter than its header says is
truncated), then asks decord, then decodes the first and the last frame. Decord may still
print one line to stderr for a file it cannot open; the error raised is ours.

Sampling. The release feeds Qwen2.5-VL through qwen-vl-utils: about 2 frames per second
for training, clamped to [4, 16] frames and rounded down to an even count (the model
packs frames in temporal pairs), taken at round(linspace(0, N - 1, n)); 16 uniform frames
for inference. `VideoClip.sample_fps` carries the real rate of the sampled frames because
Qwen2.5-VL derives temporal position ids from the fps handed to the processor: frames
passed without it are taken as 24 fps and their time positions collapse.

Writing. OpenCV's 'mp4v' (MPEG-4 Part 2) writer, in an MP4 or an AVI container (the
release's videos come in both): the same frames give byte-identical files, decord reads
back the exact frame count and fps, and the pixel error is a few levels. The codec needs even frame sides, so an odd height or width loses its last row
or column (done here explicitly rather than left to the encoder).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import decord
import numpy as np

if TYPE_CHECKING:
    from vadr1_lib.config import VideoConfig

# Qwen2.5-VL packs frames in temporal pairs (temporal_patch_size = 2); qwen-vl-utils
# therefore makes every frame count a multiple of this.
FRAME_FACTOR = 2

WRITABLE_CONTAINERS = (".mp4", ".avi")
_ISO_BMFF_HEADER_BYTES = 8
_RIFF_HEADER = struct.Struct("<4sI4s")


class VideoNotFoundError(FileNotFoundError):
    """The video path does not exist (or is not a file)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"video not found: {path}")
        self.path = path


class CorruptVideoError(ValueError):
    """The file exists but is not a readable video; `reason` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"corrupt video {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    num_frames: int
    fps: float
    width: int
    height: int
    duration_s: float


@dataclass
class VideoClip:
    """Sampled frames plus what the processor needs to place them in time."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    indices: list[int]
    sample_fps: float  # pass this to the Qwen2.5-VL processor as `fps`
    info: VideoInfo


# ---------------------------------------------------------------------------------------
# Reading


def _check_iso_bmff(path: Path, size: int) -> None:
    """Walk the top-level boxes of an MP4/MOV: a box running past the end of the file
    means the file was cut short, and a file without 'moov' has no index to decode by."""
    offset = 0
    box_types: list[bytes] = []
    with path.open("rb") as f:
        while offset < size:
            f.seek(offset)
            header = f.read(_ISO_BMFF_HEADER_BYTES)
            if len(header) < _ISO_BMFF_HEADER_BYTES:
                raise CorruptVideoError(path, f"truncated: incomplete box header at byte {offset}")
            box_size, box_type = struct.unpack(">I4s", header)
            if box_size == 1:  # 64-bit size follows the type
                large = f.read(8)
                if len(large) < 8:
                    raise CorruptVideoError(path, f"truncated: incomplete box header at byte {offset}")
                (box_size,) = struct.unpack(">Q", large)
            elif box_size == 0:  # the box runs to the end of the file
                box_size = size - offset
            if box_size < _ISO_BMFF_HEADER_BYTES:
                raise CorruptVideoError(path, f"invalid box size {box_size} at byte {offset}")
            if offset + box_size > size:
                name = box_type.decode("ascii", "backslashreplace")
                raise CorruptVideoError(
                    path, f"truncated: box '{name}' at byte {offset} needs {box_size} bytes, file has {size}"
                )
            box_types.append(box_type)
            offset += box_size
    if b"moov" not in box_types:
        raise CorruptVideoError(path, "no 'moov' box (the index is missing, e.g. an interrupted recording)")


def _check_container(path: Path) -> None:
    """Cheap structural checks before decord sees the file (see the module docstring)."""
    size = path.stat().st_size
    if size == 0:
        raise CorruptVideoError(path, "zero-byte file")
    with path.open("rb") as f:
        head = f.read(_RIFF_HEADER.size)
    if head[4:8] == b"ftyp":
        _check_iso_bmff(path, size)
    elif len(head) == _RIFF_HEADER.size:
        riff, riff_size, form = _RIFF_HEADER.unpack(head)
        # OpenDML AVIs larger than 1 GB chain further RIFF chunks after the first, so only
        # a file shorter than the first chunk is known to be cut.
        if riff == b"RIFF" and form == b"AVI " and size < riff_size + 8:
            raise CorruptVideoError(path, f"truncated: RIFF header says {riff_size + 8} bytes, file has {size}")


def _open(path: str | os.PathLike[str]) -> tuple[decord.VideoReader, VideoInfo]:
    """Open a video, validate it fully (see module docstring) and describe it."""
    path = Path(path)
    if not path.is_file():
        raise VideoNotFoundError(path)
    _check_container(path)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except (RuntimeError, decord.DECORDError, AssertionError) as error:
        # decord asserts on a zero frame count; other failures are ffmpeg open errors.
        raise CorruptVideoError(path, f"cannot be decoded ({_last_line(error)})") from error
    num_frames = len(reader)
    if num_frames <= 0:
        raise CorruptVideoError(path, "zero frames")
    fps = float(reader.get_avg_fps())
    if not math.isfinite(fps) or fps <= 0:
        raise CorruptVideoError(path, f"invalid frame rate {fps}")
    try:
        first = reader[0].shape
        reader[num_frames - 1]
    except (RuntimeError, decord.DECORDError) as error:
        raise CorruptVideoError(path, f"frames cannot be decoded ({_last_line(error)})") from error
    height, width = int(first[0]), int(first[1])
    info = VideoInfo(path, num_frames, fps, width, height, num_frames / fps)
    return reader, info


def _last_line(error: BaseException) -> str:
    """decord errors carry a C++ stack trace; its last non-empty line is the message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def read_video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, fps, size and duration of a video; raises VideoNotFoundError or
    CorruptVideoError."""
    return _open(path)[1]


def _decode(reader: decord.VideoReader, info: VideoInfo, indices: list[int]) -> np.ndarray:
    if not indices:
        raise ValueError("indices must not be empty")
    bad = [i for i in indices if not 0 <= i < info.num_frames]
    if bad:
        raise IndexError(f"frame indices {bad} out of range for {info.path} ({info.num_frames} frames)")
    try:
        frames = reader.get_batch(list(indices)).asnumpy()
    except (RuntimeError, decord.DECORDError) as error:
        raise CorruptVideoError(info.path, f"frames cannot be decoded ({_last_line(error)})") from error
    return frames


def load_frames(path: str | os.PathLike[str], indices: list[int]) -> np.ndarray:
    """The frames at `indices` (repeats allowed), as a (T, H, W, 3) uint8 RGB array."""
    reader, info = _open(path)
    return _decode(reader, info, indices)


def load_clip(path: str | os.PathLike[str], indices: list[int]) -> VideoClip:
    """Frames at `indices` plus the sampling rate and file description."""
    reader, info = _open(path)
    frames = _decode(reader, info, indices)
    return VideoClip(frames, list(indices), sampled_fps(indices, info.fps), info)


def sampled_fps(indices: list[int], fps: float) -> float:
    """Rate of the sampled frames: their count over the time span they come from.

    For frames spread over a whole video of N frames this is n * fps / N, exactly the
    `sample_fps` qwen-vl-utils hands to the processor. The span runs from the first to
    the last sampled frame inclusive, so for a clip with a removed middle (AVA's trim)
    the removed stretch counts as elapsed time.
    """
    if not indices:
        raise ValueError("indices must not be empty")
    span_frames = max(indices) - min(indices) + 1
    return len(indices) * fps / span_frames


# ---------------------------------------------------------------------------------------
# Sampling


def _spread(n: int, pool_size: int) -> list[int]:
    """n positions spread evenly over range(pool_size), ends included, as qwen-vl-utils
    does (round half to even, like torch.round). Positions repeat when n > pool_size."""
    return [int(i) for i in np.linspace(0, pool_size - 1, n).round()]


def release_frame_indices(
    num_frames: int, fps: float, *, target_fps: float = 2.0, min_frames: int = 4, max_frames: int = 16
) -> list[int]:
    """Training sampling of the release (qwen-vl-utils' `smart_nframes` with fps=2).

    n = duration * target_fps, clamped to [min_frames, max_frames] (rounded to even
    bounds) and to the video's frame count, then rounded down to an even number; a video
    of fewer than 2 frames cannot be sampled (ValueError).
    """
    if num_frames < FRAME_FACTOR:
        raise ValueError(f"a video needs at least {FRAME_FACTOR} frames to be sampled, got {num_frames}")
    if not (math.isfinite(fps) and fps > 0 and target_fps > 0):
        raise ValueError(f"fps and target_fps must be positive, got {fps} and {target_fps}")
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames} and {max_frames}")
    lower = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
    upper = max(FRAME_FACTOR, max_frames // FRAME_FACTOR * FRAME_FACTOR)
    wanted = num_frames / fps * target_fps
    n = min(max(wanted, lower), upper, num_frames)
    n = int(n // FRAME_FACTOR) * FRAME_FACTOR
    return _spread(n, num_frames)


def uniform_frame_indices(num_frames: int, n: int) -> list[int]:
    """n frames uniformly over the whole video, first and last included (inference).

    When n exceeds the frame count, frames repeat, so a batch keeps a fixed frame count.
    """
    if num_frames < 1 or n < 1:
        raise ValueError(f"need num_frames >= 1 and n >= 1, got {num_frames} and {n}")
    return _spread(n, num_frames)


# <when> carries 3 decimals (vadr1_lib.prompts.format_when), so a written span end can be
# off by up to half of 0.001 from the frame boundary it stands for.
SPAN_ROUNDING = 0.0005


def covered_frames(num_frames: int, exclude: tuple[float, float]) -> list[int]:
    """The frames a span covers, as AVA's trim drops them (see :func:`trimmed_frame_indices`)."""
    start, end = exclude
    return [i for i in range(num_frames)
            if (i + 1) / num_frames > start + SPAN_ROUNDING and i / num_frames < end - SPAN_ROUNDING]


def trimmed_frame_indices(num_frames: int, exclude: tuple[float, float], n: int) -> list[int]:
    """AVA's verification trim: drop every frame the span ``[s, e]`` covers, then take n
    frames uniformly from what is left.

    Frame i lasts from i / T to (i + 1) / T. It is covered when the span overlaps it by
    more than the span's rounding (:data:`SPAN_ROUNDING`) can explain, so the exact span of
    frames ``start <= i < end``, written at 3 decimals, removes exactly those frames for any
    video under 1,000 frames (beyond that, 3 decimals cannot name a single frame). The
    release dropped frames ``int(s T)`` to ``int(e T)``; the first version here kept a frame
    whose start lies just before ``s`` (frame 22 of 32 for ``[0.688, 0.969]``), so the exact
    span left an anomaly frame in the "anomaly removed" view.

    When fewer than n frames remain, frames repeat (as in `uniform_frame_indices`), so
    the re-query sees as many frames as the original question did. Raises ValueError when
    the span is invalid or nothing remains.
    """
    start, end = exclude
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"exclude must satisfy 0 <= s <= e <= 1, got {exclude}")
    if num_frames < 1 or n < 1:
        raise ValueError(f"need num_frames >= 1 and n >= 1, got {num_frames} and {n}")
    dropped = set(covered_frames(num_frames, exclude))
    kept = [i for i in range(num_frames) if i not in dropped]
    if not kept:
        raise ValueError(f"excluding {exclude} removes all {num_frames} frames")
    return [kept[position] for position in _spread(n, len(kept))]


def head_tail_trim(exclude_head: bool, fraction: float = 0.3) -> tuple[float, float]:
    """The span AVA removes from a video judged Normal: its first or last `fraction`."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    return (0.0, fraction) if exclude_head else (1.0 - fraction, 1.0)


# ---------------------------------------------------------------------------------------
# Writing


def write_video(frames: np.ndarray, path: str | os.PathLike[str], fps: float) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames to an .mp4 or .avi file that decord reads back.

    Deterministic (same frames, same bytes). Odd heights or widths lose their last row or
    column, because the codec needs even sides. Written to a temporary name and renamed,
    so an interrupted run never leaves a half file under `path`.
    """
    path = Path(path)
    if path.suffix.lower() not in WRITABLE_CONTAINERS:
        raise ValueError(f"write_video writes {' or '.join(WRITABLE_CONTAINERS)} files, got {path}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    height, width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    if len(frames) == 0 or height == 0 or width == 0:
        raise ValueError(f"frames must hold at least one frame of at least 2x2 pixels, got {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    try:
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot open an mp4v writer for {partial}")
        for frame in frames[:, :height, :width]:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
        writer.release()  # finishes the file (writes the 'moov' index)
        os.replace(partial, path)
    finally:
        writer.release()  # a no-op when already released
        partial.unlink(missing_ok=True)  # only still there when something failed
    return path


# ---------------------------------------------------------------------------------------
# The two views of a video the model gets (docs/fidelity.md, "Video input")


def training_clip(path: str | os.PathLike[str], cfg: VideoConfig) -> VideoClip:
    """Training view: about ``cfg.train_fps`` frames per second, clamped to [min_frames, max_frames]."""
    info = read_video_info(path)
    indices = release_frame_indices(info.num_frames, info.fps, target_fps=cfg.train_fps,
                                    min_frames=cfg.min_frames, max_frames=cfg.max_frames)
    return load_clip(path, indices)


def inference_clip(path: str | os.PathLike[str], cfg: VideoConfig) -> VideoClip:
    """Inference view: ``cfg.infer_frames`` frames uniformly over the whole video."""
    info = read_video_info(path)
    return load_clip(path, uniform_frame_indices(info.num_frames, cfg.infer_frames))
