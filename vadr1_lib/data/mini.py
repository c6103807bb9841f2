"""Vad-Reasoning-Mini: anomalies drawn into real CCTV footage, in the release's schema.

The real Vad-Reasoning videos are a large download that is not available here, so this
module builds a small stand-in that needs nothing beyond PyPI: windows of real normal
surveillance footage (OpenCV's ``vtest.avi`` by default, or the user's own folder), half
of them with a large anomaly drawn in over a contiguous span of frames. Because the
anomaly is drawn, its category, frame span and per-frame box are exact ground truth; the
text (``think``/``answer``) is written from them by :class:`vadr1_lib.data.annotate.OfflineAnnotator`.

Splits
------
Each split is balanced: even-numbered clips are abnormal, with categories taken
round-robin over :data:`vadr1_lib.data.drawing.DRAWN_CATEGORIES` (drawn by
:mod:`vadr1_lib.data.drawing`), odd-numbered clips are normal. Clips are windows of the
footage (:mod:`vadr1_lib.data.clips`): SFT and RL clips from the first 75% of each video,
val and test clips from the rest, so the test split measures generalisation to unseen
footage and the val split, on which settings are chosen, is drawn the same way (other
windows, crops and anomalies of the same held-out footage: there is one camera).

Determinism
-----------
Clip ``i`` of a split draws everything (footage window, crop, anomaly) from its own
generator, ``default_rng([seed, split code, i])``, so it depends on nothing else: the
same seed gives byte-identical JSONL files and identical decoded frames, and changing
``n_test`` does not change the first test clips.

Output (``data/vad-reasoning-mini/<profile>/`` by default)::

    sft_train.jsonl  rl.jsonl  val.jsonl  test.jsonl   release schema; `path` relative to the root
    videos/<split>/<index>_<category>.mp4
    boxes.json       video id -> split, path, category, span, per-frame boxes, source window
    manifest.json    build parameters and footage identity (the cache key), counts, timing

A build goes to a temporary sibling folder that is renamed into place only when complete,
so an interrupted build never leaves a folder that looks like a finished dataset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import vadr1_lib
from vadr1_lib import paths
from vadr1_lib.config import Profile
from vadr1_lib.data import taxonomy
from vadr1_lib.data.annotate import ClipFacts, OfflineAnnotator
from vadr1_lib.data.clips import (
    Footage,
    RenderedClip,
    decoded,
    render_clip,
    resolve_footage,
    source_indices,
    storage_size,
)
from vadr1_lib.data.dataset import write_jsonl
from vadr1_lib.data.drawing import DRAWN_CATEGORIES
from vadr1_lib.data.footage import md5
from vadr1_lib.data.video import write_video
from vadr1_lib.progress import TextProgress

# Bump when drawing, sampling or annotation changes what a build produces: it is part of
# the cache key, so datasets built by older code are rebuilt instead of silently reused.
GENERATOR_VERSION = 3  # 2: shorter annotations, one shared step 1; 3: the val split, no "small" fire

SPLITS: tuple[str, ...] = ("sft_train", "rl", "val", "test")
_SPLIT_CODES = {"sft_train": 0, "rl": 1, "test": 2, "val": 3}
HELD_OUT_SPLITS = ("val", "test")  # drawn from the footage that SFT and RL never see

SOURCE_NAME = "Mini"

MANIFEST_NAME = "manifest.json"
BOXES_NAME = "boxes.json"


class DatasetBuildError(RuntimeError):
    """The dataset cannot be built as asked (bad parameters, unusable output folder)."""




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
    def val(self) -> Path:
        return self.root / "val.jsonl"

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


def _plan(split: str, index: int, footage: Sequence[Footage], profile: Profile, rng: np.random.Generator) -> _Plan:
    """Pick the footage video and window of one clip (first draws of its generator)."""
    ranges = [f.test_starts if split in HELD_OUT_SPLITS else f.train_starts for f in footage]
    weights = np.array([high - low + 1 for low, high in ranges], np.float64)
    chosen = int(rng.choice(len(footage), p=weights / weights.sum())) if len(footage) > 1 else 0
    low, high = ranges[chosen]
    first = int(rng.integers(low, high + 1))
    info = footage[chosen].info
    indices = source_indices(first, profile.data.clip_frames, info.fps, profile.data.clip_fps)
    return _Plan(split, index, _category_of(index), chosen, tuple(indices))


def _split_sizes(profile: Profile) -> dict[str, int]:
    data = profile.data
    return {"sft_train": data.n_sft_train, "rl": data.n_rl, "val": data.n_val, "test": data.n_test}


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


def _cache_key(profile: Profile, footage: Sequence[Footage]) -> dict[str, Any]:
    """Everything a build's output depends on; a stored dataset is reused only on equality."""
    data = profile.data
    return {
        "generator_version": GENERATOR_VERSION,
        "library_version": vadr1_lib.__version__,
        "annotator": repr(OfflineAnnotator(data.seed)),
        **{name: getattr(data, name) for name in
           ("n_sft_train", "n_rl", "n_val", "n_test", "clip_frames", "clip_fps", "frame_width", "frame_height", "seed")},
        "footage": [{"name": f.name, "size": f.info.path.stat().st_size, "md5": md5(f.info.path)} for f in footage],
    }


def default_out_dir(profile: Profile) -> Path:
    """``<data dir>/vad-reasoning-mini/<profile>/``: one dataset per profile; a variant's
    own in ``<profile>-variants/<variant>/`` (beside it: a rebuild replaces the profile's
    folder as a whole)."""
    root = paths.data_dir() / "vad-reasoning-mini"
    return root / f"{profile.name}-variants" / profile.variant if profile.variant else root / profile.name


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
    usable, skipped, folder = resolve_footage(profile, footage)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(profile)
    return _build(profile, out_dir, usable, skipped, folder, _cache_key(profile, usable), progress)


def ensure_dataset(
    profile: Profile, out_dir: Path | None = None, *, footage: Path | None = None, progress: bool = True
) -> DatasetPaths:
    """The dataset for `profile`: the stored one if its manifest's cache key matches the
    current parameters and footage, else a fresh build."""
    _check_parameters(profile)
    usable, skipped, folder = resolve_footage(profile, footage)
    key = _cache_key(profile, usable)
    if out_dir is not None:
        candidates = [Path(out_dir)]
    else:  # a variant whose data settings are the profile's reuses the profile's dataset
        candidates = [default_out_dir(profile)]
        if profile.variant:
            candidates.append(default_out_dir(dataclasses.replace(profile, variant="")))
    for candidate in candidates:
        stored = DatasetPaths(candidate)
        if stored.manifest.is_file():
            try:
                manifest = json.loads(stored.manifest.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                manifest = {}
            if manifest.get("key") == key:
                return stored
    return _build(profile, candidates[0], usable, skipped, folder, key, progress).paths


def _build(
    profile: Profile, out_dir: Path, footage: list[Footage], skipped: list[tuple[str, str]],
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
        with TextProgress(len(plans), "Vad-Reasoning-Mini", "clip", enabled=progress) as bar:
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
    plans: Sequence[_Plan], footage: Sequence[Footage], width: int, height: int
) -> Iterator[tuple[_Plan, np.ndarray]]:
    """Each plan with its window of (downscaled) source frames.

    Each footage video is decoded once, front to back, and plans are served in the order
    of their first frame, so a frame can be dropped as soon as the next window starts
    after it: memory holds about one window, not the whole video.
    """
    for number, source in enumerate(footage):
        mine = sorted((p for p in plans if p.footage == number), key=lambda p: p.indices[0])
        needed = sorted({i for p in mine for i in p.indices})
        stream = decoded(source.info, needed, storage_size(source.info, width, height))
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
    plan: _Plan, clip: RenderedClip, source: Footage, annotator: OfflineAnnotator, profile: Profile
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


def _sidecar(plan: _Plan, clip: RenderedClip, source: Footage) -> dict[str, Any]:
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
