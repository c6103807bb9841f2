"""Vad-Reasoning-Mini: anomalies drawn into real CCTV footage, in the release's schema.

The real Vad-Reasoning videos are a large download that is not available here, so this
module builds a small stand-in that needs nothing beyond PyPI: windows of real normal
surveillance footage (OpenCV's ``vtest.avi`` by default, or the user's own folder), half
of them with a large anomaly drawn in over a contiguous span of frames. Because the
anomaly is drawn, its category, frame span and per-frame box are exact ground truth; the
text (``think``/``answer``) is written from them by :class:`vadr1_lib.data.annotate.OfflineAnnotator`.

What a tiny model can see
-------------------------
A ~1M-parameter Qwen2.5-VL on 112x112 frames sees 4x4 merged video tokens per frame pair.
A probe (``docs/measurements.md``) found that drawn objects about one token wide
were not learned at all, while whole-frame effects were. So every anomaly here covers a
large region (roughly 35% of the frame or more) or the whole frame, with its own colour,
texture and motion: flames under a smoke plume, a blast flash turning to smoke, a crate
falling and landing, a rubble pile behind a striped barrier, water rising from the
bottom, flicker then blackout, a thickening brown haze, a car driving in and parking, a
large animal walking across.

Clips and splits
----------------
A clip is ``clip_frames`` frames at ``clip_fps``, subsampled from the footage (10 fps for
vtest: every 2.5th frame at 4 fps), cropped with the output's aspect ratio at a random
position and size (70-100% of the largest such crop), maybe mirrored, brightness-jittered,
and resized to ``frame_width x frame_height``. Each footage video is cut in time at
:data:`TRAIN_FRACTION`: SFT and RL clips are windows of its first 75%, test clips
windows of its last 25%, so the test split measures generalisation to unseen footage
(for vtest's 795 frames: train/RL windows lie in frames 0-595, test windows in 596-794).

Each split is balanced: even-numbered clips are abnormal, with categories taken
round-robin over :data:`DRAWN_CATEGORIES`, odd-numbered clips are normal. An anomaly is
visible on frames ``start <= f < end`` (end exclusive, covering 25-70% of the clip at a
random position), so ``<when>`` = ``[start/total, end/total]`` covers exactly the frames
that show it, which is also what AVA's trim removes.

Determinism
-----------
Clip ``i`` of a split draws everything (footage window, crop, anomaly) from its own
generator, ``default_rng([seed, split code, i])``, so it depends on nothing else: the
same seed gives byte-identical JSONL files and identical decoded frames, and changing
``n_test`` does not change the first test clips.

Output (``data/vad-reasoning-mini/<profile>/`` by default)::

    sft_train.jsonl  rl.jsonl  test.jsonl   release schema; `path` relative to the root
    videos/<split>/<index>_<category>.mp4
    boxes.json       video id -> split, path, category, span, per-frame boxes, source window
    manifest.json    build parameters and footage identity (the cache key), counts, timing

A build goes to a temporary sibling folder that is renamed into place only when complete,
so an interrupted build never leaves a folder that looks like a finished dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

import vadr1_lib
from vadr1_lib import paths
from vadr1_lib.config import Profile
from vadr1_lib.data import taxonomy
from vadr1_lib.data.annotate import ClipFacts, OfflineAnnotator
from vadr1_lib.data.dataset import write_jsonl
from vadr1_lib.data.footage import FootageUnavailableError, ensure_vtest, scan_footage
from vadr1_lib.data.video import VideoInfo, load_frames, read_video_info, write_video

# Bump when drawing, sampling or annotation changes what a build produces: it is part of
# the cache key, so datasets built by older code are rebuilt instead of silently reused.
GENERATOR_VERSION = 2  # 2: shorter annotations, one shared step 1

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1 and y1 exclusive
Point = tuple[float, float]
Colour = Sequence[float] | np.ndarray  # RGB, 0-255

# Interleaved so that small splits (ci has 2-4 abnormal clips per split) still mix
# bottom, whole-frame and object anomalies.
DRAWN_CATEGORIES: tuple[str, ...] = (
    "Fire",
    "Flooding or Tsunami",
    "Illegal Parking",
    "Electrical Failures",
    "Falling Objects",
    "Air Pollution",
    "Animals in Urban Areas",
    "Explosion",
    "Obstacles on Road",
)

SPLITS: tuple[str, ...] = ("sft_train", "rl", "test")
_SPLIT_CODES = {"sft_train": 0, "rl": 1, "test": 2}

TRAIN_FRACTION = 0.75  # each footage video: first 75% for SFT/RL windows, the rest for test
MIN_CROP_FRACTION = 0.7  # crops are 70-100% of the largest crop with the output's aspect
BRIGHTNESS_RANGE = (0.8, 1.2)
SPAN_FRACTION_RANGE = (0.25, 0.70)  # share of the clip's frames that show the anomaly
# Source frames are kept in memory downscaled so that the largest crop has this many
# source pixels per output pixel (the smallest, 70% of it, still 1.4): enough for an
# area-averaged resize, and 7x less memory than vtest's full frames at 112 px.
STORAGE_OVERSAMPLE = 2.0
_DECODE_CHUNK = 64  # frames decoded per load_frames call (bounds memory for big footage)
_BOX_ALPHA = 0.25  # a pixel belongs to the drawn region when the layer covers >= 25% of it

SOURCE_NAME = "Mini"
VTEST_SCENE = "a campus path between lawns, filmed by a fixed CCTV camera"
USER_FOOTAGE_SCENE = "a scene filmed by a fixed surveillance camera"

MANIFEST_NAME = "manifest.json"
BOXES_NAME = "boxes.json"


class DatasetBuildError(RuntimeError):
    """The dataset cannot be built as asked (bad parameters, unusable output folder)."""


# ---------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------

_SHIFT = 4  # cv2 fixed-point bits: sub-pixel shape positions, so motion is smooth at 56 px
_ONE = 1 << _SHIFT


class _Layer:
    """An RGBA overlay at frame size; shapes are composited onto it with "over".

    Shapes are rasterised into 8-bit masks with cv2's anti-aliasing (which only works on
    8-bit images) and sub-pixel coordinates, inside their own bounding rectangle only.
    The layer's alpha is also what the anomaly's box is measured from, so the box is the
    region that was really drawn.
    """

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.premultiplied = np.zeros((height, width, 3), np.float32)
        self.alpha = np.zeros((height, width), np.float32)

    def _over(self, coverage: np.ndarray, x0: int, y0: int, colour: Sequence[float], alpha: float) -> None:
        region = (slice(y0, y0 + coverage.shape[0]), slice(x0, x0 + coverage.shape[1]))
        a = coverage * alpha
        self.premultiplied[region] = self.premultiplied[region] * (1 - a[..., None]) + a[..., None] * np.float32(colour)
        self.alpha[region] = self.alpha[region] * (1 - a) + a

    def polygon(self, points: np.ndarray | Sequence[Sequence[float]], colour: Colour, alpha: float = 1.0) -> None:
        pts = np.asarray(points, np.float64)
        x0, y0 = max(int(math.floor(pts[:, 0].min())) - 1, 0), max(int(math.floor(pts[:, 1].min())) - 1, 0)
        x1 = min(int(math.ceil(pts[:, 0].max())) + 2, self.width)
        y1 = min(int(math.ceil(pts[:, 1].max())) + 2, self.height)
        if x1 <= x0 or y1 <= y0:
            return  # entirely outside the frame
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        fixed = np.round((pts - (x0, y0)) * _ONE).astype(np.int32)
        cv2.fillPoly(mask, [fixed], 255, cv2.LINE_AA, _SHIFT)
        self._over(mask.astype(np.float32) / 255.0, x0, y0, colour, alpha)

    def ellipse(
        self, centre: tuple[float, float], axes: tuple[float, float], colour: Sequence[float],
        alpha: float = 1.0, angle: float = 0.0,
    ) -> None:
        self.polygon(_ellipse_points(centre, axes, angle), colour, alpha)

    def bar(self, p0: Point, p1: Point, width: float, colour: Colour, alpha: float = 1.0) -> None:
        """A straight bar of `width` from p0 to p1 (legs, braces, spark rays)."""
        (xa, ya), (xb, yb) = p0, p1
        length = math.hypot(xb - xa, yb - ya) or 1.0
        nx, ny = -(yb - ya) / length * width / 2, (xb - xa) / length * width / 2
        self.polygon([(xa + nx, ya + ny), (xb + nx, yb + ny), (xb - nx, yb - ny), (xa - nx, ya - ny)], colour, alpha)

    def field(self, colour: np.ndarray, alpha: np.ndarray) -> None:
        """Composite a per-pixel colour image (H, W, 3) with per-pixel alpha (H, W)."""
        a = np.clip(alpha, 0.0, 1.0).astype(np.float32)
        self.premultiplied = self.premultiplied * (1 - a[..., None]) + a[..., None] * colour
        self.alpha = self.alpha * (1 - a) + a

    def composite(self, frame: np.ndarray) -> np.ndarray:
        return frame * (1 - self.alpha[..., None]) + self.premultiplied

    def box(self) -> Box | None:
        return _mask_box(self.alpha >= _BOX_ALPHA)


def _ellipse_points(centre: Point, axes: tuple[float, float], angle: float = 0.0, count: int = 40) -> np.ndarray:
    theta = np.linspace(0, 2 * np.pi, count, endpoint=False)
    x, y = axes[0] * np.cos(theta), axes[1] * np.sin(theta)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], axis=1)


def _mask_box(mask: np.ndarray) -> Box | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Cloud-like noise in [0, 1] with features about `cell` pixels wide."""
    grid = rng.random((max(2, int(height / cell) + 2), max(2, int(width / cell) + 2))).astype(np.float32)
    noise = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    low, high = float(noise.min()), float(noise.max())
    return (noise - low) / max(high - low, 1e-6)


def _progress(k: int, n: int) -> float:
    """0 on the span's first frame, 1 on its last."""
    return k / max(n - 1, 1)


def _coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, shaped to broadcast to (H, W)."""
    return (np.arange(width, dtype=np.float32) + 0.5)[None, :], (np.arange(height, dtype=np.float32) + 0.5)[:, None]


def _whole(height: int, width: int) -> Box:
    return 0, 0, width, height


def _ground_shadow(layer: _Layer, centre_x: float, ground_y: float, half_width: float, height: int) -> None:
    layer.ellipse((centre_x, ground_y), (half_width, max(1.0, 0.035 * height)), (15, 15, 15), 0.45)


def _draw_fire(span: np.ndarray, rng: np.random.Generator) -> list[Box]:
    """Flickering flames along the bottom under a dark smoke plume, growing, with a glow."""
    n, height, width, _ = span.shape
    fire_width = rng.uniform(0.6, 0.85) * width
    left = rng.uniform(0, width - fire_width)
    base = height  # flames rise from the bottom edge: their fuel is out of view
    peak = rng.uniform(0.42, 0.55) * height
    tongues, phase = int(rng.integers(3, 6)), rng.uniform(0, 2 * np.pi)
    smoke_grey = rng.uniform(35, 55)
    x, y = _coords(height, width)
    u = (x - left) / fire_width
    envelope = np.sqrt(np.clip(1 - (2 * u - 1) ** 2, 0, 1))
    rising_smoke = _smooth_noise(rng, 3 * height, width, max(3.0, 0.12 * width))
    stops = np.array([0.0, 0.15, 0.5, 1.0], np.float32)
    colours = np.array([(255, 240, 170), (255, 200, 50), (250, 120, 20), (200, 40, 10)], np.float32)
    centre_x = left + fire_width / 2
    glow = np.exp(-(((x - centre_x) / (0.7 * fire_width)) ** 2 + ((y - base) / (0.7 * height)) ** 2))
    boxes = []
    for k in range(n):
        growth = 0.7 + 0.3 * _progress(k, n)
        flames_top = base - peak * growth
        # Smoke: a plume above the flames, widening upwards, its texture scrolling up, its
        # lower edge fading into the flames.
        offset = int(round((n - 1 - k) * 0.08 * height)) % (2 * height)
        texture = rising_smoke[offset : offset + height]
        spread = 0.5 * fire_width * (0.5 + 0.9 * np.clip((flames_top - y) / max(flames_top, 1.0), 0, 1))
        plume = np.clip(1 - np.abs(x - centre_x) / spread, 0, 1) ** 0.6
        plume = plume * np.clip((flames_top + 0.15 * peak - y) / (0.3 * peak), 0, 1)
        smoke_alpha = 0.92 * plume * np.clip(0.4 + 0.9 * texture, 0, 1)
        smoke = (smoke_grey + 40 * texture[..., None] - 20).repeat(3, axis=2) * np.float32([1.0, 0.95, 0.9])
        # Flames: pointed tongues of uneven height that flicker from frame to frame.
        strength = np.interp(u, np.linspace(0, 1, tongues + 2), rng.uniform(0.55, 1.0, tongues + 2))
        tongue = np.abs(np.sin(np.pi * tongues * u + phase + 1.9 * k)) ** 1.5 * strength
        flame_height = peak * growth * envelope * (0.4 + 0.6 * tongue)
        flutter = 0.5 * (_smooth_noise(rng, height, width, max(2.0, 0.035 * width)) - 0.5)
        relative = np.clip((base - y) / np.maximum(flame_height, 1e-3), 0, None)
        relative = relative + flutter * np.clip((base - y) / peak, 0, 1)
        inside = (relative <= 1) & (flame_height > 1)
        flame_alpha = inside * np.clip((1.05 - relative) / 0.35, 0, 1)
        flame_colour = np.stack([np.interp(relative, stops, colours[:, c]) for c in range(3)], axis=-1)
        frame = span[k] + (np.float32([255, 140, 40]) * 0.3 * glow[..., None])
        layer = _Layer(height, width)
        layer.field(smoke.astype(np.float32), smoke_alpha)
        layer.field(flame_colour.astype(np.float32), flame_alpha)
        span[k] = layer.composite(frame)
        boxes.append(layer.box())
    return boxes


def _draw_explosion(span: np.ndarray, rng: np.random.Generator) -> list[Box]:
    """A white-yellow fireball expanding with a whole-frame flash, then a dark smoke cloud."""
    n, height, width, _ = span.shape
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.4, 0.65) * height
    radius = rng.uniform(0.45, 0.6) * max(height, width)
    flash_frames = max(1, min(n - 1, round(rng.uniform(0.3, 0.45) * n))) if n > 1 else 1
    x, y = _coords(height, width)
    angle = np.arctan2(y - cy, x - cx)
    ragged = 1 + sum(rng.uniform(0.03, 0.09) * np.sin(m * angle + rng.uniform(0, 2 * np.pi)) for m in (3, 5, 7, 11))
    distance = np.hypot(x - cx, y - cy) / ragged
    smoke_texture = _smooth_noise(rng, height, width, max(3.0, 0.1 * width))
    stops = np.array([0.0, 0.45, 0.75, 1.0], np.float32)
    fire = np.array([(255, 255, 240), (255, 230, 100), (255, 140, 30), (230, 80, 20)], np.float32)
    boxes = []
    for k in range(n):
        layer = _Layer(height, width)
        frame = span[k]
        if k < flash_frames:
            q = (k + 1) / flash_frames
            r = distance / (radius * (0.35 + 0.65 * q))
            frame = frame + (255 - frame) * np.float32(0.55 * (1 - 0.6 * q))  # the flash lights up the frame
            colour = np.stack([np.interp(r, stops, fire[:, c]) for c in range(3)], axis=-1).astype(np.float32)
            layer.field(colour, np.clip((1.05 - r) / 0.2, 0, 1))
        else:
            q = (k - flash_frames + 1) / max(n - flash_frames, 1)
            r = distance / (radius * (1.0 + 0.1 * q))
            grey = 55 + 50 * smoke_texture
            colour = np.stack([grey + 8, grey + 3, grey], axis=-1).astype(np.float32)
            embers = np.clip((smoke_texture - 0.6) / 0.4, 0, 1) * (r < 0.6) * (1 - q)
            colour = colour * (1 - embers[..., None]) + embers[..., None] * np.float32([255, 120, 20])
            layer.field(colour, 0.92 * np.clip((1.05 - r) / 0.2, 0, 1))
        span[k] = layer.composite(frame)
        boxes.append(layer.box())
    return boxes


def _crate(layer: _Layer, cx: float, cy: float, w: float, h: float, angle: float, wood: np.ndarray) -> None:
    """A wooden crate: dark frame, planks and an X brace, rotated by `angle` about its centre."""
    c, s = math.cos(angle), math.sin(angle)

    def place(points: Sequence[tuple[float, float]]) -> np.ndarray:
        p = np.asarray(points, np.float64) * (w, h)
        return np.stack([cx + c * p[:, 0] - s * p[:, 1], cy + s * p[:, 0] + c * p[:, 1]], axis=1)

    dark, light = wood * 0.5, np.minimum(wood * 1.15, 255)
    layer.polygon(place([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]), dark)
    layer.polygon(place([(-0.4, -0.4), (0.4, -0.4), (0.4, 0.4), (-0.4, 0.4)]), wood)
    for v in (-0.133, 0.133):
        layer.polygon(place([(-0.4, v - 0.012), (0.4, v - 0.012), (0.4, v + 0.012), (-0.4, v + 0.012)]), dark)
    for sign in (1, -1):
        ends = place([(-0.4, -0.4 * sign), (0.4, 0.4 * sign)])
        layer.bar(tuple(ends[0]), tuple(ends[1]), 0.13 * min(w, h), dark)
        layer.bar(tuple(ends[0]), tuple(ends[1]), 0.08 * min(w, h), light)


def _draw_falling_objects(span: np.ndarray, rng: np.random.Generator) -> list[Box]:
    """A large crate drops in from the top, tumbling, lands with a dust puff and stays."""
    n, height, width, _ = span.shape
    side = rng.uniform(0.52, 0.62) * min(height, width)
    w, h = side * rng.uniform(1.0, 1.25), side
    cx_final = rng.uniform(w / 2, width - w / 2)
    drift = rng.uniform(-0.1, 0.1) * width
    ground = rng.uniform(0.93, 1.0) * height
    land = max(1, round(rng.uniform(0.35, 0.55) * n))
    tilt = math.radians(rng.uniform(12, 30)) * rng.choice([-1, 1])
    wood = np.float32(rng.choice([(170, 115, 60), (150, 100, 50), (190, 140, 80)]))
    boxes = []
    for k in range(n):
        layer = _Layer(height, width)
        if k < land:  # falling: starts half visible at the top edge, accelerating
            q = (k / land) ** 2
            cy, cx, angle = (ground - h / 2) * q, cx_final + drift * (1 - q), tilt * (1 - q)
        else:
            cy, cx, angle = ground - h / 2, cx_final, 0.0
            _ground_shadow(layer, cx, ground, 0.55 * w, height)
            if k - land < 2:  # the impact throws up dust on either side
                for sign in (-1, 1):
                    layer.ellipse((cx + sign * 0.55 * w, ground - 0.08 * h), (0.3 * w, 0.14 * h), (195, 185, 165), 0.75)
        _crate(layer, cx, cy, w, h, angle, wood)
        span[k] = layer.composite(span[k])
        boxes.append(layer.box())
    return boxes


def _draw_obstacles_on_road(span: np.ndarray, rng: np.random.Generator) -> list[Box]:
    """A rubble pile with a red-and-white barrier in front appears on the path and stays."""
    n, height, width, _ = span.shape
    pile_w, pile_h = rng.uniform(0.75, 0.95) * width, rng.uniform(0.42, 0.55) * height
    cx, bottom = rng.uniform(pile_w / 2, width - pile_w / 2), height * rng.uniform(0.98, 1.04)
    appear = max(1, round(rng.uniform(0.15, 0.3) * n))
    # Pile outline and rocks in pile units: u in [-0.5, 0.5] across, v in [0, 1] upwards.
    us = np.linspace(-0.5, 0.5, 13)
    tops = np.sqrt(np.clip(1 - (2 * us) ** 2, 0, 1)) ** 0.7 * rng.uniform(0.75, 1.0, us.size)
    rocks = [
        (rng.uniform(-0.42, 0.42), rng.uniform(0.05, 0.75), rng.uniform(0.04, 0.09), rng.uniform(0.08, 0.18),
         rng.uniform(0, np.pi), np.float32(rng.choice([(120, 115, 110), (90, 85, 80), (140, 120, 95), (70, 65, 60)])))
        for _ in range(22)
    ]
    stripe_count = int(rng.integers(6, 9))
    boxes = []
    for k in range(n):
        scale = 0.7 + 0.3 * min(1.0, (k + 1) / appear)  # dumped in: grows over the first frames
        pw, ph = pile_w * scale, pile_h * scale

        def at(u: float, v: float) -> tuple[float, float]:
            return cx + u * pw, bottom - v * ph

        layer = _Layer(height, width)
        outline = [at(u, t) for u, t in zip(us, tops)] + [at(0.5, 0), at(-0.5, 0)]
        layer.polygon(outline, (100, 92, 82))
        for u, v, a, b, angle, colour in rocks:
            top_here = float(np.interp(u, us, tops))
            if v + a < top_here:
                layer.ellipse(at(u, v), (b * pw / 2, a * ph * 1.6), colour, angle=angle)
        # The barrier: a striped plank on two legs, in front of the pile.
        plank_top, plank_bottom = at(-0.42, 0.62)[1], at(-0.42, 0.45)[1]
        for leg in (-0.33, 0.33):
            layer.bar(at(leg, 0.5), at(leg, 0.0), 0.035 * pw, (45, 45, 45))
        x_left, x_right = at(-0.42, 0)[0], at(0.42, 0)[0]
        edges = np.linspace(x_left, x_right, stripe_count + 1)
        for i in range(stripe_count):
            colour = (215, 30, 30) if i % 2 == 0 else (245, 245, 240)
            x0, x1 = edges[i], edges[i + 1]
            layer.polygon([(x0, plank_top), (x1, plank_top), (x1, plank_bottom), (x0, plank_bottom)], colour)
        span[k] = layer.composite(span[k])
        boxes.append(layer.box())
    return boxes


def _draw_flooding(span: np.ndarray, rng: np.random.Generator) -> list[Box]:
    """Blue water rises from the bottom, with a moving wavy surface, ripples and foam."""
    n, height, width, _ = span.shape
    level_from, level_to = rng.uniform(0.18, 0.28) * height, rng.uniform(0.55, 0.72) * height
    amplitude, wavelength = rng.uniform(0.02, 0.035) * height, rng.uniform(0.25, 0.45) * width
    phase = rng.uniform(0, 2 * np.pi)
    shallow, deep = np.float32([60, 125, 180]), np.float32([20, 60, 120])
    foam = np.float32([225, 235, 240])
    x, y = _coords(height, width)
    boxes = []
    for k in range(n):
        level = level_from + (level_to - level_from) * _progress(k, n)
        surface = (height - level + amplitude * np.sin(2 * np.pi * x / wavelength + phase + 1.3 * k)
                   + 0.5 * amplitude * np.sin(2 * np.pi * x / (0.37 * wavelength) - 0.9 * k))
        depth = y - surface
        shade = np.clip(depth / (0.5 * height), 0, 1)[..., None]
        ripples = 14 * np.sin(2 * np.pi * y / max(0.06 * height, 2.0) + 3 * np.sin(x / max(0.1 * width, 1.0)) + 1.1 * k)
        colour = shallow * (1 - shade) + deep * shade + ripples[..., None]
        crest = np.clip(1 - np.abs(depth - 0.012 * height) / max(0.015 * height, 0.75), 0, 1)[..., None]
        colour = colour * (1 - crest) + foam * crest
        layer = _Layer(height, width)
        layer.field(colour.astype(np.float32), 0.9 * np.clip(depth + 0.5, 0, 1))
        span[k] = layer.composite(span[k])
        boxes.append(layer.box())
    return boxes


def _draw_electrical_failures(span: np.ndarray, rng: np.random.Generator) -> list[Box]:
    """The lights flicker dim-bright-dim with a burst of sparks, then the frame goes black."""
    n, height, width, _ = span.shape
    flicker = max(1, min(n - 1, round(rng.uniform(0.35, 0.5) * n))) if n > 1 else 1
    spark_x, spark_y = rng.uniform(0.25, 0.75) * width, rng.uniform(0.2, 0.5) * height
    reach = min(height, width)
    boxes = []
    for k in range(n):
        if k < flicker:
            dim = rng.uniform(0.12, 0.25) if k % 2 == 0 else rng.uniform(0.4, 0.55)
            frame = span[k] * np.float32(dim) + np.float32([0, 6, 18])
            layer = _Layer(height, width)
            layer.ellipse((spark_x, spark_y), (0.16 * reach, 0.16 * reach), (150, 190, 255), 0.35)
            for angle in rng.uniform(0, 2 * np.pi, int(rng.integers(9, 14))):
                length = rng.uniform(0.12, 0.3) * reach
                end = (spark_x + length * math.cos(angle), spark_y + length * math.sin(angle))
                layer.bar((spark_x, spark_y), end, max(1.0, 0.015 * reach), (215, 235, 255))
            layer.ellipse((spark_x, spark_y), (0.045 * reach, 0.045 * reach), (255, 255, 255))
            frame = layer.composite(frame)
        else:  # blackout: only sensor noise is left
            frame = span[k] * np.float32(0.03) + rng.normal(0, 2.0, (height, width, 1)).astype(np.float32) + 2
        span[k] = frame
        boxes.append(_whole(height, width))
    return boxes


def _draw_air_pollution(span: np.ndarray, rng: np.random.Generator) -> list[Box]:
    """A drifting grey-brown haze thickens over the whole frame and washes out colour."""
    n, height, width, _ = span.shape
    haze = np.float32(rng.choice([(165, 150, 120), (150, 140, 125), (172, 148, 108)]))
    density_from, density_to = rng.uniform(0.5, 0.6), rng.uniform(0.8, 0.88)
    clouds = _smooth_noise(rng, height, 2 * width, max(3.0, 0.2 * width))
    drift = rng.choice([-1, 1]) * 0.06 * width
    boxes = []
    for k in range(n):
        offset = int(round(k * drift)) % width
        texture = clouds[:, offset : offset + width]
        density = (density_from + (density_to - density_from) * _progress(k, n)) * (0.8 + 0.4 * texture)
        frame = span[k]
        washed = 0.5 * frame + 0.5 * frame.mean(axis=-1, keepdims=True)
        colour = haze + 30 * (texture[..., None] - 0.5)
        a = np.clip(density, 0, 0.95)[..., None]
        span[k] = washed * (1 - a) + colour * a
        boxes.append(_whole(height, width))
    return boxes


def _car(layer: _Layer, left: float, bottom: float, w: float, h: float, facing_right: bool, paint: np.ndarray) -> None:
    """A side view of a saloon car, `w` x `h`, its bottom edge (the tyres) at `bottom`."""

    def at(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(left + (u if facing_right else 1 - u) * w, bottom - h + v * h) for u, v in points]

    _ground_shadow(layer, left + w / 2, bottom, 0.52 * w, layer.height)
    layer.polygon(at([(0, 0.45), (0.04, 0.38), (0.24, 0.35), (0.33, 0.06), (0.70, 0.06), (0.82, 0.35),
                      (0.97, 0.41), (1.0, 0.52), (1.0, 0.78), (0, 0.78)]), paint)
    glass = (165, 195, 215)
    layer.polygon(at([(0.355, 0.12), (0.505, 0.12), (0.505, 0.34), (0.285, 0.34)]), glass)
    layer.polygon(at([(0.535, 0.12), (0.68, 0.12), (0.77, 0.34), (0.535, 0.34)]), glass)
    layer.bar(at([(0.52, 0.36)])[0], at([(0.52, 0.74)])[0], max(1.0, 0.008 * w), paint * 0.5)
    layer.ellipse(at([(0.975, 0.5)])[0], (0.025 * w, 0.05 * h), (255, 240, 180))
    layer.ellipse(at([(0.012, 0.5)])[0], (0.015 * w, 0.05 * h), (210, 20, 20))
    for u in (0.2, 0.8):
        centre = at([(u, 0.8)])[0]
        layer.ellipse(centre, (0.2 * h, 0.2 * h), (25, 25, 25))
        layer.ellipse(centre, (0.1 * h, 0.1 * h), (160, 160, 160))


def _draw_illegal_parking(span: np.ndarray, rng: np.random.Generator) -> list[Box]:
    """A large car drives in from one side, slows down and stays parked on the walkway."""
    n, height, width, _ = span.shape
    w = rng.uniform(0.8, 0.95) * width
    h = w * rng.uniform(0.44, 0.5)
    bottom = rng.uniform(0.88, 0.98) * height
    paint = np.float32(rng.choice([(200, 30, 30), (30, 60, 190), (235, 190, 20), (20, 140, 60), (235, 235, 235)]))
    facing_right = bool(rng.random() < 0.5)
    parked = rng.uniform(0, width - w)
    entering = -0.45 * w if facing_right else width - 0.55 * w  # 55% of the car visible
    arrive = max(1, round(rng.uniform(0.35, 0.55) * n))
    boxes = []
    for k in range(n):
        q = min(1.0, k / arrive)
        left = entering + (parked - entering) * (1 - (1 - q) ** 2)  # decelerating to a stop
        layer = _Layer(height, width)
        _car(layer, left, bottom, w, h, facing_right, paint)
        span[k] = layer.composite(span[k])
        boxes.append(layer.box())
    return boxes


_OUTLINE = (25, 20, 15)
@dataclass(frozen=True)
class _Animal:
    """A quadruped silhouette; lengths are relative to the body length."""

    coat: tuple[int, int, int]
    muzzle: tuple[int, int, int]
    patches: tuple[int, int, int] | None  # colour of coat patches, None for a plain coat
    legs: float
    head: float
    lift: float  # how high the head is carried above the body's centre line
    ears: str  # "round", "up" or "side"
    tail: bool


_ANIMALS: dict[str, _Animal] = {
    # Coats chosen to stand out from both green grass and a grey path (a brown bear on
    # grass differed by only ~17 levels on average).
    "bear": _Animal((32, 28, 26), (125, 100, 75), None, legs=0.32, head=0.19, lift=0.1, ears="round", tail=False),
    "cow": _Animal((238, 234, 225), (215, 165, 155), (30, 26, 22), legs=0.42, head=0.17, lift=0.2, ears="side",
                   tail=True),
    "horse": _Animal((190, 105, 45), (150, 85, 40), None, legs=0.5, head=0.15, lift=0.42, ears="up", tail=True),
}


def _draw_animals(span: np.ndarray, rng: np.random.Generator) -> list[Box]:
    """A large animal (bear, cow or horse silhouette) walks across the path."""
    n, height, width, _ = span.shape
    kind = _ANIMALS[str(rng.choice(sorted(_ANIMALS)))]
    body = rng.uniform(0.5, 0.6) * width
    depth, legs = 0.42 * body, kind.legs * body
    coat, dark = np.float32(kind.coat), np.float32(kind.coat) * 0.6
    direction = 1 if rng.random() < 0.5 else -1
    x_from, x_to = (0.33, 0.67) if direction == 1 else (0.67, 0.33)
    ground = rng.uniform(0.9, 0.98) * height
    stride = rng.uniform(1.4, 2.0)
    patches = [(rng.uniform(-0.35, 0.3), rng.uniform(-0.5, 0.45), rng.uniform(0.1, 0.2), rng.uniform(0.2, 0.4))
               for _ in range(5)] if kind.patches is not None else []
    boxes = []
    for k in range(n):
        cx = (x_from + (x_to - x_from) * _progress(k, n)) * width
        cy = ground - legs - depth / 2

        def at(u: float, v: float) -> tuple[float, float]:
            """Body units: u forward (head side), v downwards, both scaled by body length."""
            return cx + direction * u * body, cy + v * body

        layer = _Layer(height, width)
        _ground_shadow(layer, cx, ground, 0.55 * body, height)
        edge = max(1.0, 0.012 * width)  # a dark outline keeps a pale coat apart from a pale path
        swing = 0.4 * math.sin(stride * k)
        for hip, sign, shade in ((-0.33, 1, dark), (0.33, -1, dark), (-0.28, -1, coat), (0.38, 1, coat)):
            foot = (hip + sign * swing * kind.legs, 0.21 + kind.legs)
            layer.bar(at(hip, 0.12), at(*foot), 0.12 * body + 2 * edge, _OUTLINE)
            layer.bar(at(hip, 0.12), at(*foot), 0.12 * body, shade)
        if kind.tail:
            layer.bar(at(-0.48, -0.1), at(-0.58, 0.3), 0.035 * body, dark)
        layer.ellipse((cx, cy), (0.52 * body + edge, depth / 2 + edge), _OUTLINE)
        layer.ellipse((cx, cy), (0.52 * body, depth / 2), coat)
        for u, v, a, b in patches:
            layer.ellipse(at(u, v * depth / body), (a * body, b * depth / 2), kind.patches)
        size, lift = kind.head, kind.lift
        head_size = size * body
        layer.bar(at(0.38, -0.04), at(0.6, -lift), 0.2 * body, coat)  # neck
        layer.ellipse(at(0.62, -lift), (head_size + edge, 0.75 * head_size + edge), _OUTLINE)
        layer.ellipse(at(0.62, -lift), (head_size, 0.75 * head_size), coat)
        layer.ellipse(at(0.62 + 0.9 * size, -lift + 0.3 * size), (0.6 * head_size, 0.45 * head_size), kind.muzzle)
        if kind.ears == "round":
            layer.ellipse(at(0.55, -lift - 0.75 * size), (0.3 * head_size, 0.3 * head_size), dark)
        elif kind.ears == "up":
            ear = at(0.56, -lift - 0.6 * size)
            layer.bar(ear, (ear[0], ear[1] - 0.6 * head_size), 0.25 * head_size, dark)
        else:
            ear = at(0.48, -lift - 0.1 * size)
            layer.ellipse(ear, (0.45 * head_size, 0.2 * head_size), dark, angle=0.3 * direction)
        eye = at(0.62 + 0.2 * size, -lift - 0.2 * size)
        layer.ellipse(eye, (0.1 * head_size, 0.1 * head_size), (10, 10, 10))
        span[k] = layer.composite(span[k])
        boxes.append(layer.box())
    return boxes


_DRAWERS: dict[str, Callable[[np.ndarray, np.random.Generator], list[Box]]] = {
    "Fire": _draw_fire,
    "Explosion": _draw_explosion,
    "Falling Objects": _draw_falling_objects,
    "Obstacles on Road": _draw_obstacles_on_road,
    "Flooding or Tsunami": _draw_flooding,
    "Electrical Failures": _draw_electrical_failures,
    "Air Pollution": _draw_air_pollution,
    "Illegal Parking": _draw_illegal_parking,
    "Animals in Urban Areas": _draw_animals,
}
assert set(_DRAWERS) == set(DRAWN_CATEGORIES) and set(DRAWN_CATEGORIES) <= set(taxonomy.CATEGORIES)


def random_span(total_frames: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random anomaly span (start, end), end exclusive, covering 25-70% of the frames."""
    if total_frames < 2:
        raise ValueError(f"a clip needs at least 2 frames to hold an anomaly span, got {total_frames}")
    shortest = max(1, math.ceil(SPAN_FRACTION_RANGE[0] * total_frames))
    longest = max(shortest, min(total_frames - 1, math.floor(SPAN_FRACTION_RANGE[1] * total_frames)))
    length = int(rng.integers(shortest, longest + 1))
    start = int(rng.integers(0, total_frames - length + 1))
    return start, start + length


def draw_anomaly(
    frames: np.ndarray, category: str, rng: np.random.Generator, *, span: tuple[int, int] | None = None
) -> tuple[np.ndarray, dict[int, Box]]:
    """Draw `category` into a copy of `frames` (T, H, W, 3) uint8 over `span` (start, end
    exclusive; random via :func:`random_span` when None).

    Returns the new frames and the drawn region's box per frame of the span, so the span
    is ``(min(boxes), max(boxes) + 1)``. Frames outside the span are returned unchanged.
    """
    if category not in _DRAWERS:
        raise ValueError(f"no drawing for {category!r}; drawn categories: {', '.join(DRAWN_CATEGORIES)}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}")
    start, end = span if span is not None else random_span(len(frames), rng)
    if not 0 <= start < end <= len(frames):
        raise ValueError(f"span {(start, end)} is not inside the {len(frames)} frames")
    region = frames[start:end].astype(np.float32)
    boxes = _DRAWERS[category](region, rng)
    missing = [start + k for k, box in enumerate(boxes) if box is None]
    if missing:  # a drawer bug, not bad input: every frame of the span must show the anomaly
        raise AssertionError(f"{category}: nothing visible drawn on frames {missing}")
    out = frames.copy()
    out[start:end] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return out, {start + k: box for k, box in enumerate(boxes)}


# ---------------------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------------------


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
class _Footage:
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


def _resolve_footage(
    profile: Profile, footage: Path | None
) -> tuple[list[_Footage], list[tuple[str, str]], Path | None]:
    """The usable footage, the skipped files (name, reason) and the folder (None: vtest)."""
    data = profile.data
    folder = Path(footage) if footage is not None else (Path(data.footage).expanduser() if data.footage else None)
    if folder is not None and not folder.is_absolute():
        folder = paths.PROJECT_ROOT / folder  # notebooks and the CLI run from different folders
    if folder is None:
        candidates, skipped, scene = [read_video_info(ensure_vtest())], [], VTEST_SCENE
        names = [candidates[0].path.name]
    else:
        scan = scan_footage(folder)
        candidates, scene = scan.usable, USER_FOOTAGE_SCENE
        skipped = [(path.relative_to(folder).as_posix(), reason) for path, reason in scan.skipped]
        names = [info.path.relative_to(folder).as_posix() for info in candidates]
    usable = []
    for info, name in zip(candidates, names):
        windows = _windows(info, data.clip_frames, data.clip_fps)
        if isinstance(windows, str):
            skipped.append((name, windows))
        else:
            usable.append(_Footage(info, name, scene, *windows))
    if not usable:
        where = folder if folder is not None else candidates[0].path
        raise FootageUnavailableError(
            f"no footage in {where} is long enough for {data.clip_frames}-frame clips at {data.clip_fps} fps: "
            + "; ".join(f"{name}: {reason}" for name, reason in skipped)
        )
    return usable, skipped, folder


def _storage_size(info: VideoInfo, width: int, height: int) -> tuple[int, int]:
    """Size at which source frames are kept in memory (never larger than the source, and
    with the source's aspect ratio: crops are taken from it afterwards)."""
    largest_crop_h = min(info.height, info.width * height / width)
    scale = min(1.0, STORAGE_OVERSAMPLE * height / largest_crop_h)
    return max(1, round(info.width * scale)), max(1, round(info.height * scale))


def _decoded(info: VideoInfo, indices: Sequence[int], size: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, downscaled frame) for the sorted unique `indices`, decoded in chunks."""
    for first in range(0, len(indices), _DECODE_CHUNK):
        chunk = list(indices[first : first + _DECODE_CHUNK])
        for index, frame in zip(chunk, load_frames(info.path, chunk)):
            if frame.shape[1::-1] != size:
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            yield index, frame


# ---------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetPaths:
    """Where a built Vad-Reasoning-Mini lives."""

    root: Path

    @property
    def sft_train(self) -> Path:
        return self.root / "sft_train.jsonl"

    @property
    def rl(self) -> Path:
        return self.root / "rl.jsonl"

    @property
    def test(self) -> Path:
        return self.root / "test.jsonl"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def boxes(self) -> Path:
        return self.root / BOXES_NAME

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME


@dataclass
class BuildReport:
    """What a build wrote, from what, and how long it took."""

    paths: DatasetPaths
    counts: dict[str, dict[str, int]]  # split -> {"rows", "abnormal", "normal"}
    categories: dict[str, dict[str, int]]  # split -> category -> clips
    footage: list[str]
    skipped_footage: list[tuple[str, str]]  # (file, reason)
    seconds: float
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)


def format_build_report(report: BuildReport) -> str:
    """A few lines for a terminal or a notebook: where, how long, what, from which footage."""
    lines = [f"Vad-Reasoning-Mini in {report.paths.root} ({report.seconds:.1f} s)"]
    for split, count in report.counts.items():
        lines.append(f"  {split:9s} {count['rows']:5d} clips ({count['abnormal']} abnormal, {count['normal']} normal)")
    lines.append(f"  footage: {', '.join(report.footage)}")
    if report.skipped_footage:
        lines.append(f"  skipped {len(report.skipped_footage)} footage file(s):")
        lines += [f"    {name}: {reason}" for name, reason in report.skipped_footage]
    return "\n".join(lines)


@dataclass(frozen=True)
class _Plan:
    """One clip before rendering: its place in a split, its category and source window."""

    split: str
    index: int
    category: str
    footage: int  # index into the usable footage list
    indices: tuple[int, ...]  # source frames, one per clip frame

    @property
    def video_id(self) -> str:
        """Unique across splits, so boxes.json needs one key and annotations differ."""
        return f"{self.split}_{self.index:05d}_{_slug(self.category)}"

    @property
    def relative_path(self) -> str:
        return f"videos/{self.split}/{self.index:05d}_{_slug(self.category)}.mp4"


def _slug(category: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")


def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def _category_of(index: int) -> str:
    """Even clips abnormal (categories round-robin), odd clips normal: balanced splits."""
    return DRAWN_CATEGORIES[(index // 2) % len(DRAWN_CATEGORIES)] if index % 2 == 0 else taxonomy.NORMAL


def _plan(split: str, index: int, footage: Sequence[_Footage], profile: Profile, rng: np.random.Generator) -> _Plan:
    """Pick the footage video and window of one clip (first draws of its generator)."""
    ranges = [f.test_starts if split == "test" else f.train_starts for f in footage]
    weights = np.array([high - low + 1 for low, high in ranges], np.float64)
    chosen = int(rng.choice(len(footage), p=weights / weights.sum())) if len(footage) > 1 else 0
    low, high = ranges[chosen]
    first = int(rng.integers(low, high + 1))
    info = footage[chosen].info
    indices = source_indices(first, profile.data.clip_frames, info.fps, profile.data.clip_fps)
    return _Plan(split, index, _category_of(index), chosen, tuple(indices))


def _split_sizes(profile: Profile) -> dict[str, int]:
    data = profile.data
    return {"sft_train": data.n_sft_train, "rl": data.n_rl, "test": data.n_test}


def _check_parameters(profile: Profile) -> None:
    data = profile.data
    problems = [f"{name} must be >= 0, got {size}" for name, size in _split_sizes(profile).items() if size < 0]
    if data.clip_frames < 2:
        problems.append(f"clip_frames must be >= 2, got {data.clip_frames}")
    if not (math.isfinite(data.clip_fps) and data.clip_fps > 0):
        problems.append(f"clip_fps must be positive, got {data.clip_fps}")
    if data.frame_width < 2 or data.frame_height < 2 or data.frame_width % 2 or data.frame_height % 2:
        problems.append(f"frame size must be even and >= 2 (the mp4 codec), got {data.frame_width}x{data.frame_height}")
    if problems:
        raise DatasetBuildError(f"profile {profile.name!r}: " + "; ".join(problems))


def _cache_key(profile: Profile, footage: Sequence[_Footage]) -> dict[str, Any]:
    """Everything a build's output depends on; a stored dataset is reused only on equality."""
    data = profile.data
    return {
        "generator_version": GENERATOR_VERSION,
        "library_version": vadr1_lib.__version__,
        "annotator": repr(OfflineAnnotator(data.seed)),
        **{name: getattr(data, name) for name in
           ("n_sft_train", "n_rl", "n_test", "clip_frames", "clip_fps", "frame_width", "frame_height", "seed")},
        "footage": [{"name": f.name, "size": f.info.path.stat().st_size, "md5": _md5(f.info.path)} for f in footage],
    }


def _md5(path: Path) -> str:
    """Content identity of a footage file (the whole file: a few seconds per GB)."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "md5").hexdigest()


def default_out_dir(profile: Profile) -> Path:
    """``<data dir>/vad-reasoning-mini/<profile>/``: one dataset per profile."""
    return paths.data_dir() / "vad-reasoning-mini" / profile.name


def _prepare_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder that is not a previous build: it may hold user files."""
    if not out_dir.exists() or (out_dir / MANIFEST_NAME).is_file():
        return
    if not out_dir.is_dir() or any(out_dir.iterdir()):
        raise DatasetBuildError(f"{out_dir} exists and is not a Vad-Reasoning-Mini build (no {MANIFEST_NAME}); "
                                "choose another out_dir or remove it")


def build_dataset(
    profile: Profile, out_dir: Path | None = None, *, footage: Path | None = None, progress: bool = True
) -> BuildReport:
    """Build Vad-Reasoning-Mini for `profile` into `out_dir` (default: :func:`default_out_dir`).

    `footage` (else ``profile.data.footage``) is a folder of the user's normal videos;
    unreadable or too short files are skipped and reported. Without either, OpenCV's
    vtest.avi is used (fetched once by :func:`vadr1_lib.data.footage.ensure_vtest`).
    """
    _check_parameters(profile)
    usable, skipped, folder = _resolve_footage(profile, footage)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(profile)
    return _build(profile, out_dir, usable, skipped, folder, _cache_key(profile, usable), progress)


def ensure_dataset(
    profile: Profile, out_dir: Path | None = None, *, footage: Path | None = None, progress: bool = True
) -> DatasetPaths:
    """The dataset for `profile`: the stored one if its manifest's cache key matches the
    current parameters and footage, else a fresh build."""
    _check_parameters(profile)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(profile)
    usable, skipped, folder = _resolve_footage(profile, footage)
    key = _cache_key(profile, usable)
    stored = DatasetPaths(out_dir)
    if stored.manifest.is_file():
        try:
            manifest = json.loads(stored.manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            manifest = {}
        if manifest.get("key") == key:
            return stored
    return _build(profile, out_dir, usable, skipped, folder, key, progress).paths


def _build(
    profile: Profile, out_dir: Path, footage: list[_Footage], skipped: list[tuple[str, str]],
    folder: Path | None, key: dict[str, Any], progress: bool,
) -> BuildReport:
    began = time.perf_counter()
    _prepare_out_dir(out_dir)
    data = profile.data
    sizes = _split_sizes(profile)
    rngs = {(split, i): _clip_rng(data.seed, split, i) for split in SPLITS for i in range(sizes[split])}
    plans = [_plan(split, i, footage, profile, rng) for (split, i), rng in rngs.items()]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        annotator = OfflineAnnotator(data.seed)
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        boxes: dict[str, dict[str, Any]] = {}
        with tqdm(total=len(plans), disable=not progress, desc="Vad-Reasoning-Mini", unit="clip") as bar:
            for plan, window in _windows_in_decoding_order(plans, footage, data.frame_width, data.frame_height):
                clip = render_clip(window, plan.category, rngs[plan.split, plan.index],
                                   width=data.frame_width, height=data.frame_height)
                write_video(clip.frames, staging / plan.relative_path, data.clip_fps)
                source = footage[plan.footage]
                rows[plan.split, plan.index] = _row(plan, clip, source, annotator, profile)
                boxes[plan.video_id] = _sidecar(plan, clip, source)
                bar.update()
        for split in SPLITS:
            write_jsonl([rows[split, i] for i in range(sizes[split])], staging / f"{split}.jsonl")
        (staging / BOXES_NAME).write_text(json.dumps(boxes, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        counts, categories = _counts(plans)
        seconds = time.perf_counter() - began
        manifest = {
            "key": key,
            "profile": profile.name,
            "data_section": asdict(data),
            "footage_folder": str(folder) if folder is not None else None,  # None: OpenCV's vtest.avi
            "skipped_footage": [list(item) for item in skipped],
            "counts": counts,
            "categories": categories,
            "split_points": {
                f.name: {"frames": f.info.num_frames, "train_windows_start": list(f.train_starts),
                         "test_windows_start": list(f.test_starts)}
                for f in footage
            },
            "build_seconds": round(seconds, 2),
        }
        # Written last: a folder with a manifest is a complete build.
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    names = [f.name for f in footage]
    return BuildReport(DatasetPaths(out_dir), counts, categories, names, skipped, seconds, manifest)


def _windows_in_decoding_order(
    plans: Sequence[_Plan], footage: Sequence[_Footage], width: int, height: int
) -> Iterator[tuple[_Plan, np.ndarray]]:
    """Each plan with its window of (downscaled) source frames.

    Each footage video is decoded once, front to back, and plans are served in the order
    of their first frame, so a frame can be dropped as soon as the next window starts
    after it: memory holds about one window, not the whole video.
    """
    for number, source in enumerate(footage):
        mine = sorted((p for p in plans if p.footage == number), key=lambda p: p.indices[0])
        needed = sorted({i for p in mine for i in p.indices})
        stream = _decoded(source.info, needed, _storage_size(source.info, width, height))
        cache: dict[int, np.ndarray] = {}
        for position, plan in enumerate(mine):
            while plan.indices[-1] not in cache:
                index, frame = next(stream)
                cache[index] = frame
            window = np.stack([cache[i] for i in plan.indices])
            if position + 1 < len(mine):
                next_first = mine[position + 1].indices[0]
                for index in [i for i in cache if i < next_first]:
                    del cache[index]
            yield plan, window


def _counts(plans: Sequence[_Plan]) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Rows, abnormal and normal clips per split; clips per category per split."""
    counts, categories = {}, {}
    for split in SPLITS:
        labels = [p.category for p in plans if p.split == split]
        normal = labels.count(taxonomy.NORMAL)
        counts[split] = {"rows": len(labels), "abnormal": len(labels) - normal, "normal": normal}
        categories[split] = dict(Counter(label for label in labels if label != taxonomy.NORMAL))
    return counts, categories


def _replace_folder(staging: Path, out_dir: Path) -> None:
    """Swap the finished build into place; the old build is removed only afterwards."""
    retired = out_dir.parent / f".{out_dir.name}.retired-{os.getpid()}"
    if out_dir.exists():
        os.replace(out_dir, retired)
    os.replace(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _row(
    plan: _Plan, clip: RenderedClip, source: _Footage, annotator: OfflineAnnotator, profile: Profile
) -> dict[str, Any]:
    """The release-schema row of one clip (RL rows carry only the weak label)."""
    data = profile.data
    abnormal = clip.category != taxonomy.NORMAL
    common = {"source": SOURCE_NAME, "video": plan.video_id}
    if plan.split == "rl":
        label = taxonomy.ABNORMAL if abnormal else taxonomy.NORMAL
        return {**common, "anomaly_type": label, "path": plan.relative_path, "data_type": "video", "solution": label}
    facts = ClipFacts(
        video_id=plan.video_id, total_frames=data.clip_frames, fps=data.clip_fps, width=data.frame_width,
        height=data.frame_height, scene=source.scene, category=clip.category,
        start_frame=clip.start, end_frame=clip.end, boxes=clip.boxes,
    )
    annotation = annotator.annotate(facts, clip.frames)
    row = {**common, "anomaly_type": clip.category}
    if abnormal:
        row.update(start=clip.start, end=clip.end)
    return {**row, "total_frames": data.clip_frames, "path": plan.relative_path, **annotation.to_row()}


def _sidecar(plan: _Plan, clip: RenderedClip, source: _Footage) -> dict[str, Any]:
    """The ground truth of one clip for notebooks and plots (boxes.json)."""
    return {
        "split": plan.split,
        "path": plan.relative_path,
        "category": clip.category,
        "start": clip.start,
        "end": clip.end,
        "boxes": {str(frame): list(box) for frame, box in sorted(clip.boxes.items())},
        "footage": source.name,
        "source_frames": list(plan.indices),
        "crop": list(clip.crop),
        "flipped": clip.flipped,
        "brightness": round(clip.brightness, 4),
    }


def load_boxes(paths_or_root: DatasetPaths | Path) -> dict[str, dict[str, Any]]:
    """boxes.json with its frame keys and boxes back as ints and tuples."""
    root = paths_or_root.root if isinstance(paths_or_root, DatasetPaths) else Path(paths_or_root)
    raw: Mapping[str, dict[str, Any]] = json.loads((root / BOXES_NAME).read_text(encoding="utf-8"))
    return {
        video: {**entry, "boxes": {int(frame): tuple(box) for frame, box in entry["boxes"].items()}}
        for video, entry in raw.items()
    }
