"""Clips from footage: windows of normal surveillance video, augmented, with an anomaly drawn in.

A clip is ``clip_frames`` frames at ``clip_fps``, subsampled from the footage (10 fps for
vtest: every 2.5th frame at 4 fps), cropped with the output's aspect ratio at a random
position and size (70-100% of the largest such crop), maybe mirrored, brightness-jittered,
and resized to ``frame_width x frame_height``. Each footage video is cut in time at
:data:`TRAIN_FRACTION`: SFT and RL clips are windows of its first 75%, test clips windows
of its last 25%, so the test split measures generalisation to unseen footage (for vtest's
795 frames: train/RL windows lie in frames 0-595, test windows in 596-794).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vadr1_lib import paths
from vadr1_lib.config import Profile
from vadr1_lib.data import taxonomy
from vadr1_lib.data.drawing import Box, draw_anomaly
from vadr1_lib.data.footage import FootageUnavailableError, ensure_vtest, scan_footage
from vadr1_lib.data.video import VideoInfo, load_frames, read_video_info

TRAIN_FRACTION = 0.75  # each footage video: first 75% for SFT/RL windows, the rest for test
MIN_CROP_FRACTION = 0.7  # crops are 70-100% of the largest crop with the output's aspect
BRIGHTNESS_RANGE = (0.8, 1.2)
# Source frames are kept in memory downscaled so that the largest crop has this many
# source pixels per output pixel (the smallest, 70% of it, still 1.4): enough for an
# area-averaged resize, and 7x less memory than vtest's full frames at 112 px.
STORAGE_OVERSAMPLE = 2.0
_DECODE_CHUNK = 64  # frames decoded per load_frames call (bounds memory for big footage)

VTEST_SCENE = "a campus path between lawns, filmed by a fixed CCTV camera"
USER_FOOTAGE_SCENE = "a scene filmed by a fixed surveillance camera"




@dataclass(frozen=True)
class RenderedClip:
    """One clip as written: frames, ground truth, and the augmentation that made it."""

    frames: np.ndarray  # (T, height, width, 3) uint8 RGB
    category: str  # a DRAWN_CATEGORIES name or Normal
    start: int | None  # first anomalous frame; None for a normal clip
    end: int | None  # one past the last anomalous frame
    boxes: dict[int, Box]
    crop: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the source frames given
    flipped: bool
    brightness: float


def render_clip(
    source: np.ndarray, category: str, rng: np.random.Generator, *, width: int, height: int
) -> RenderedClip:
    """Turn a window of footage (T, H, W, 3) uint8 into a clip of `width` x `height`.

    Crop (output aspect, 70-100% of the largest such crop, random position), maybe mirror,
    jitter brightness, resize; then, unless `category` is Normal, draw the anomaly. The
    augmentation is drawn from `rng` before the anomaly, so the same generator state
    rendered as Normal gives exactly the background the anomaly was drawn on.
    """
    if source.ndim != 4 or source.shape[-1] != 3 or source.dtype != np.uint8 or len(source) == 0:
        raise ValueError(f"source must be a non-empty (T, H, W, 3) uint8 array, got {source.shape} {source.dtype}")
    if width < 2 or height < 2:
        raise ValueError(f"clip size must be at least 2x2, got {width}x{height}")
    src_h, src_w = source.shape[1:3]
    aspect = width / height
    largest_h = min(src_h, src_w / aspect)
    crop_h = rng.uniform(MIN_CROP_FRACTION, 1.0) * largest_h
    crop_w = crop_h * aspect
    x0, y0 = rng.uniform(0, src_w - crop_w), rng.uniform(0, src_h - crop_h)
    crop = (int(round(x0)), int(round(y0)), int(round(x0 + crop_w)), int(round(y0 + crop_h)))
    flipped = bool(rng.random() < 0.5)
    brightness = float(rng.uniform(*BRIGHTNESS_RANGE))
    frames = np.empty((len(source), height, width, 3), np.uint8)
    for index, frame in enumerate(source):
        patch = frame[crop[1] : crop[3], crop[0] : crop[2]]
        patch = cv2.resize(patch, (width, height), interpolation=cv2.INTER_AREA)
        if flipped:
            patch = patch[:, ::-1]
        frames[index] = np.clip(patch.astype(np.float32) * brightness, 0, 255).round().astype(np.uint8)
    if category == taxonomy.NORMAL:
        return RenderedClip(frames, category, None, None, {}, crop, flipped, brightness)
    frames, boxes = draw_anomaly(frames, category, rng)
    return RenderedClip(frames, category, min(boxes), max(boxes) + 1, boxes, crop, flipped, brightness)


def source_indices(first: int, clip_frames: int, source_fps: float, clip_fps: float) -> list[int]:
    """Frame indices of a clip of `clip_frames` frames at `clip_fps`, starting at source
    frame `first` of footage at `source_fps` (frames repeat if the footage is slower)."""
    step = source_fps / clip_fps
    return [first + int(round(i * step)) for i in range(clip_frames)]


# ---------------------------------------------------------------------------------------
# Footage
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Footage:
    """One usable footage video and where train and test windows may start in it."""

    info: VideoInfo
    name: str  # relative to the footage folder (or the file name for vtest)
    scene: str
    train_starts: tuple[int, int]  # inclusive range of window starts
    test_starts: tuple[int, int]


def _windows(info: VideoInfo, clip_frames: int, clip_fps: float) -> tuple[tuple[int, int], tuple[int, int]] | str:
    """Start ranges of train and test windows, or why the video is too short."""
    length = source_indices(0, clip_frames, info.fps, clip_fps)[-1] + 1
    split = int(info.num_frames * TRAIN_FRACTION)
    train, test = (0, split - length), (split, info.num_frames - length)
    if train[1] < train[0] or test[1] < test[0]:
        needed = math.ceil(length / (1 - TRAIN_FRACTION))
        return (f"too short: {info.num_frames} frames, a train and a test window of {length} frames"
                f" need about {needed}")
    return train, test


def footage_scene(folder: str | Path | None) -> str:
    """What step 1 says the video shows: vtest's campus path, or a neutral phrase for a user's folder."""
    return VTEST_SCENE if folder is None else USER_FOOTAGE_SCENE


def resolve_footage(
    profile: Profile, footage: Path | None
) -> tuple[list[Footage], list[tuple[str, str]], Path | None]:
    """The usable footage, the skipped files (name, reason) and the folder (None: vtest)."""
    data = profile.data
    folder = Path(footage) if footage is not None else (Path(data.footage).expanduser() if data.footage else None)
    if folder is not None and not folder.is_absolute():
        folder = paths.PROJECT_ROOT / folder  # notebooks and the CLI run from different folders
    if folder is None:
        candidates, skipped, scene = [read_video_info(ensure_vtest())], [], footage_scene(folder)
        names = [candidates[0].path.name]
    else:
        scan = scan_footage(folder)
        candidates, scene = scan.usable, footage_scene(folder)
        skipped = [(path.relative_to(folder).as_posix(), reason) for path, reason in scan.skipped]
        names = [info.path.relative_to(folder).as_posix() for info in candidates]
    usable = []
    for info, name in zip(candidates, names):
        windows = _windows(info, data.clip_frames, data.clip_fps)
        if isinstance(windows, str):
            skipped.append((name, windows))
        else:
            usable.append(Footage(info, name, scene, *windows))
    if not usable:
        where = folder if folder is not None else candidates[0].path
        raise FootageUnavailableError(
            f"no footage in {where} is long enough for {data.clip_frames}-frame clips at {data.clip_fps} fps: "
            + "; ".join(f"{name}: {reason}" for name, reason in skipped)
        )
    return usable, skipped, folder


def storage_size(info: VideoInfo, width: int, height: int) -> tuple[int, int]:
    """Size at which source frames are kept in memory (never larger than the source, and
    with the source's aspect ratio: crops are taken from it afterwards)."""
    largest_crop_h = min(info.height, info.width * height / width)
    scale = min(1.0, STORAGE_OVERSAMPLE * height / largest_crop_h)
    return max(1, round(info.width * scale)), max(1, round(info.height * scale))


def decoded(info: VideoInfo, indices: Sequence[int], size: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, downscaled frame) for the sorted unique `indices`, decoded in chunks."""
    for first in range(0, len(indices), _DECODE_CHUNK):
        chunk = list(indices[first : first + _DECODE_CHUNK])
        for index, frame in zip(chunk, load_frames(info.path, chunk)):
            if frame.shape[1::-1] != size:
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            yield index, frame
