"""Nine anomaly categories drawn into frames: the rasteriser and one drawer per category.

Vad-Reasoning-Mini (:mod:`vadr1_lib.data.mini`) draws its anomalies instead of filming
them, so its ground truth (category, frame span, per-frame box) is exact.

What a tiny model can see: a ~1M-parameter Qwen2.5-VL on 112x112 frames sees 4x4 merged
video tokens per frame pair. A probe (``docs/measurements.md``) found that drawn objects
about one token wide were not learned at all, while whole-frame effects were. So every
anomaly here covers a large region (roughly 35% of the frame or more) or the whole frame,
with its own colour, texture and motion: flames under a smoke plume, a blast flash turning
to smoke, a crate falling and landing, a rubble pile behind a striped barrier, water
rising from the bottom, flicker then blackout, a thickening brown haze, a car driving in
and parking, a large animal walking across.

An anomaly is visible on frames ``start <= f < end`` (end exclusive, covering 25-70% of
the clip at a random position), so ``<when>`` = ``[start/total, end/total]`` covers
exactly the frames that show it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vadr1_lib.data import taxonomy

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

SPAN_FRACTION_RANGE = (0.25, 0.70)  # share of the clip's frames that show the anomaly
_BOX_ALPHA = 0.25  # a pixel belongs to the drawn region when the layer covers >= 25% of it

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
