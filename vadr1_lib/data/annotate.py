"""The two-stage annotation pipeline: frame captions, then the P2C-CoT steps and the answer.

The paper built its SFT data in two stages (``docs/vad-r1.md``, "Annotation pipeline"):

(a) a vision-language model (Qwen-VL-Max) captions densely sampled frames;
(b) a text LLM (Qwen-Max) writes each chain-of-thought step from those captions, with a
    separate prompt per step, and is told the human-verified ground truth (category, span).

Both stages sit behind one interface, ``annotate(facts, frames) -> Annotation``, with two
backends:

- :class:`OfflineAnnotator` writes the text from what the synthetic-data builder knows
  (:class:`ClipFacts`: the scene, the drawn anomaly's category, span and boxes). It needs
  no network and is deterministic, so CI and a laptop build the same dataset. Its text is
  short on purpose: it is the SFT target of a tiny model trained for minutes on a CPU,
  which can learn a small, regular language but not the release's ~460-token paragraphs.
- :class:`DashScopeAnnotator` runs the paper's pipeline against Alibaba's DashScope API
  (OpenAI-compatible endpoint), with retries and a per-video cache so that an interrupted
  run resumes without paying twice for a finished call.

What is never left to a language model: the tags and their order (assembled by
:mod:`vadr1_lib.prompts`), ``<which>`` (the category from the facts), ``<when>`` (computed
exactly from frames, as the release did: ``round(start/total, 3)``, ``round(end/total, 3)``)
and ``<where>`` (words computed from the drawn boxes by :func:`where_words`). Those are
ground truth; a generated sentence can only describe them.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vadr1_lib.data import dataset, taxonomy, video
from vadr1_lib.progress import track
from vadr1_lib.data.phrases import (
    ABNORMAL_STEP_TEMPLATES,
    NORMAL_STEP_TEMPLATES,
    NORMAL_WHATS,
    NORMAL_WHYS,
    phrases_for,
)
from vadr1_lib.prompts import (
    NORMAL_LABEL,
    format_answer_abnormal,
    format_answer_normal,
    format_think,
)

Box = tuple[float, float, float, float]

# A box covering at least this share of the frame is described as the whole frame:
# "lower-left" says nothing useful about smoke or water that fills most of the view.
WHOLE_FRAME_COVERAGE = 0.5


# ---------------------------------------------------------------------------------------
# Input and output
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipFacts:
    """Everything the annotator is told about one clip: the builder's ground truth.

    ``scene`` is a noun phrase that completes "The video shows ...", e.g. "a paved campus
    path seen by a fixed CCTV camera, where pedestrians walk"; it must not mention the
    anomaly, because step 1 (global perception) is built from it.

    ``category`` is a canonical taxonomy name (:data:`vadr1_lib.data.taxonomy.CATEGORIES`) or
    ``"Normal"``. For an abnormal clip, frames ``start_frame <= f < end_frame`` show the
    anomaly (end exclusive); these are the release's ``start``/``end`` fields, and
    ``<when>`` is ``[start/total, end/total]``, so an anomaly lasting to the last frame has
    ``end_frame == total_frames`` and ends at 1.0. ``boxes`` maps a frame index to the
    drawn anomaly's pixel box ``(x0, y0, x1, y1)`` (x1, y1 exclusive); it is empty for a
    normal clip and must not be for an abnormal one, since ``<where>`` comes from it.
    Inconsistent facts raise ``ValueError`` here, not later as a wrong annotation.
    """

    video_id: str
    total_frames: int
    fps: float
    width: int
    height: int
    scene: str
    category: str
    start_frame: int | None = None
    end_frame: int | None = None
    boxes: Mapping[int, tuple[int, int, int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.video_id, str) or not self.video_id.strip():
            raise ValueError(f"video_id must be a non-empty string, got {self.video_id!r}")
        for name in ("total_frames", "width", "height"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{self.video_id}: {name} must be a positive int, got {value!r}")
        if not isinstance(self.fps, (int, float)) or not math.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"{self.video_id}: fps must be a positive number, got {self.fps!r}")
        if not isinstance(self.scene, str) or not self.scene.strip():
            raise ValueError(f"{self.video_id}: scene is empty")
        canonical = taxonomy.normalize_label(self.category)
        if canonical != self.category or canonical == taxonomy.ABNORMAL:
            raise ValueError(
                f"{self.video_id}: category must be a canonical category name or {NORMAL_LABEL!r}, "
                f"got {self.category!r} (canonical: {canonical!r})"
            )
        if self.is_normal:
            if self.start_frame is not None or self.end_frame is not None or self.boxes:
                raise ValueError(f"{self.video_id}: a normal clip has no span and no boxes")
            return
        start, end = self.start_frame, self.end_frame
        if not (_is_int(start) and _is_int(end) and 0 <= start < end <= self.total_frames):
            raise ValueError(
                f"{self.video_id}: need ints 0 <= start_frame < end_frame <= total_frames "
                f"({self.total_frames}), got {start!r}, {end!r}"
            )
        if round(start / self.total_frames, 3) >= round(end / self.total_frames, 3):
            raise ValueError(
                f"{self.video_id}: span {start}-{end} of {self.total_frames} frames is empty at 3 decimals"
            )
        if not self.boxes:
            raise ValueError(f"{self.video_id}: an abnormal clip needs the drawn anomaly's boxes")
        for frame, box in self.boxes.items():
            if not _is_int(frame) or not 0 <= frame < self.total_frames:
                raise ValueError(f"{self.video_id}: box frame {frame!r} outside 0..{self.total_frames - 1}")
            _check_box(box, self.width, self.height)

    @property
    def is_normal(self) -> bool:
        return self.category == NORMAL_LABEL

    @property
    def span(self) -> tuple[float, float] | None:
        """``<when>`` exactly as the release computed it: frames over total, 3 decimals."""
        if self.is_normal:
            return None
        return round(self.start_frame / self.total_frames, 3), round(self.end_frame / self.total_frames, 3)

    def shows_anomaly(self, frame: int) -> bool:
        return not self.is_normal and self.start_frame <= frame < self.end_frame

    def box_near(self, frame: int) -> Box:
        """The drawn box at ``frame``, or at the nearest frame that has one."""
        nearest = min(self.boxes, key=lambda key: (abs(key - frame), key))
        return self.boxes[nearest]

    def typical_box(self) -> Box:
        """Coordinate-wise median of the boxes inside the span (all boxes if none is).

        The median rather than the union: a moving object (an animal crossing the path)
        sweeps a union over half the frame, while the median says where it mostly is.
        """
        inside = [box for frame, box in self.boxes.items() if self.shows_anomaly(frame)]
        chosen = inside or list(self.boxes.values())
        x0, y0, x1, y1 = (statistics.median(coords) for coords in zip(*chosen))
        return x0, y0, x1, y1


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_box(box: Sequence[float], width: int, height: int) -> None:
    if len(box) != 4 or not all(isinstance(v, (int, float, np.integer, np.floating)) for v in box):
        raise ValueError(f"box must be four numbers (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {tuple(box)!r} is empty or outside the {width}x{height} frame")


def where_words(box: Sequence[float], width: int, height: int) -> str:
    """A box in words, as the release writes ``<where>``: "lower-left area of the frame".

    The frame is cut into a 3x3 grid and the box's centre names the cell ("center of the
    frame", "middle-left area of the frame", "upper-center area of the frame", ...); a box
    covering at least half the frame is "whole frame". The result is a noun phrase without
    article because both the answer template ("approximately in the <where>...") and the
    steps put "the" in front of it.
    """
    _check_box(box, width, height)
    x0, y0, x1, y1 = (float(v) for v in box)
    if (x1 - x0) * (y1 - y0) >= WHOLE_FRAME_COVERAGE * width * height:
        return "whole frame"
    column = ("left", "center", "right")[min(int(3 * (x0 + x1) / 2 / width), 2)]
    row = ("upper", "middle", "lower")[min(int(3 * (y0 + y1) / 2 / height), 2)]
    if (row, column) == ("middle", "center"):
        return "center of the frame"
    return f"{row}-{column} area of the frame"


@dataclass(frozen=True)
class Annotation:
    """One clip's annotation: stage (a) captions, stage (b) steps and answer fields.

    ``which``/``when``/``where`` are ground truth, the other fields generated text. The
    release's strings are ``think`` and ``answer``; the SFT target is ``target``. Building
    an annotation formats both, so text that would break the template (an empty field, a
    stray tag) fails here rather than in a training file.
    """

    video_id: str
    captions: tuple[str, ...]
    steps: tuple[str, ...]
    which: str
    what: str
    why: str
    when: tuple[float, float] | None = None
    where: str | None = None
    how: str | None = None

    def __post_init__(self) -> None:
        abnormal_fields = (self.when, self.where, self.how)
        if self.which == NORMAL_LABEL and any(value is not None for value in abnormal_fields):
            raise ValueError(f"{self.video_id}: a normal annotation has no when/where/how")
        if self.which != NORMAL_LABEL and any(value is None for value in abnormal_fields):
            raise ValueError(f"{self.video_id}: an abnormal annotation needs when, where and how")
        self.target  # formatting checks every text field (non-empty, no template tag) or raises

    @property
    def is_normal(self) -> bool:
        return self.which == NORMAL_LABEL

    @property
    def think(self) -> str:
        return format_think(self.steps)

    @property
    def answer(self) -> str:
        if self.is_normal:
            return format_answer_normal(self.which, self.what, self.why)
        return format_answer_abnormal(self.which, self.what, self.when, self.where, self.why, self.how)

    @property
    def target(self) -> str:
        """The SFT target, as the release defines it: think, newline, answer."""
        return f"{self.think}\n{self.answer}"

    def to_row(self) -> dict[str, str]:
        """The release-schema fields an annotation owns (the builder adds the rest)."""
        return {"think": self.think, "answer": self.answer}


class Annotator(Protocol):
    """What both backends offer; ``frame_indices`` defaults to uniform sampling."""

    def annotate(
        self, facts: ClipFacts, frames: np.ndarray, *, frame_indices: Sequence[int] | None = None
    ) -> Annotation: ...


def sampled_frames(
    facts: ClipFacts, frames: np.ndarray, frame_indices: Sequence[int] | None
) -> list[int]:
    """Validate ``frames`` (T, H, W, 3) uint8 and return the video frame index of each."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        got = f"{getattr(frames, 'shape', None)} {getattr(frames, 'dtype', type(frames).__name__)}"
        raise ValueError(f"{facts.video_id}: frames must be a (T, H, W, 3) uint8 array, got {got}")
    if frames.shape[0] == 0:
        raise ValueError(f"{facts.video_id}: no frames to annotate")
    if frame_indices is None:
        return video.uniform_frame_indices(facts.total_frames, frames.shape[0])
    indices = [int(i) for i in frame_indices]
    if len(indices) != frames.shape[0]:
        raise ValueError(f"{facts.video_id}: {len(indices)} frame indices for {frames.shape[0]} frames")
    if any(not 0 <= i < facts.total_frames for i in indices) or indices != sorted(indices):
        raise ValueError(f"{facts.video_id}: frame indices must be ascending within 0..{facts.total_frames - 1}")
    return indices


def seconds_text(frame: int, fps: float) -> str:
    return f"{frame / fps:.1f} s"



def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


class OfflineAnnotator:
    """Template annotator over the builder's ground truth; no network, deterministic.

    Stage (a) renders one caption per sampled frame from the facts (the scene, and the
    anomaly with its place in the frame when that frame shows it). Stage (b) writes each
    step from one template list per step, filled from the same facts the captions were
    rendered from (an LLM would have to read them back out of the caption text).
    Variation comes from an RNG seeded by ``seed`` and the video id, so a clip's text does
    not depend on which other clips are annotated or in what order.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __repr__(self) -> str:
        return f"OfflineAnnotator(seed={self.seed})"

    def annotate(
        self, facts: ClipFacts, frames: np.ndarray, *, frame_indices: Sequence[int] | None = None
    ) -> Annotation:
        indices = sampled_frames(facts, frames, frame_indices)
        rng = random.Random(f"vadr1-annotate:{self.seed}:{facts.video_id}")
        if facts.is_normal:
            return self._normal(facts, indices, rng)
        return self._abnormal(facts, indices, rng)

    def _normal(self, facts: ClipFacts, indices: list[int], rng: random.Random) -> Annotation:
        captions = tuple(self._caption(facts, i, event="") for i in indices)
        steps = tuple(rng.choice(templates).format(scene=facts.scene) for templates in NORMAL_STEP_TEMPLATES)
        return Annotation(
            video_id=facts.video_id,
            captions=captions,
            steps=steps,
            which=NORMAL_LABEL,
            what=rng.choice(NORMAL_WHATS),
            why=rng.choice(NORMAL_WHYS),
        )

    def _abnormal(self, facts: ClipFacts, indices: list[int], rng: random.Random) -> Annotation:
        bank = phrases_for(facts.category)
        words = {
            "scene": facts.scene,
            "event": rng.choice(bank.events),
            "where": where_words(facts.typical_box(), facts.width, facts.height),
            "t0": seconds_text(facts.start_frame, facts.fps),
            "t1": seconds_text(facts.end_frame, facts.fps),
            "why": rng.choice(bank.whys),
            "category": facts.category,
            "cause": rng.choice(bank.causes),
            "norm": rng.choice(bank.norms),
            "how": rng.choice(bank.hows),
        }
        words["Why"] = _capitalized(words["why"])
        captions = tuple(self._caption(facts, i, words["event"]) for i in indices)
        steps = tuple(rng.choice(templates).format(**words) for templates in ABNORMAL_STEP_TEMPLATES)
        return Annotation(
            video_id=facts.video_id,
            captions=captions,
            steps=steps,
            which=facts.category,
            what=words["event"],
            why=words["why"],
            when=facts.span,
            where=words["where"],
            how=words["how"],
        )

    @staticmethod
    def _caption(facts: ClipFacts, frame: int, event: str) -> str:
        scene = f"{seconds_text(frame, facts.fps)}: {_capitalized(facts.scene)}"
        if not facts.shows_anomaly(frame):
            return f"{scene}; nothing unusual is visible."
        where = where_words(facts.box_near(frame), facts.width, facts.height)
        return f"{scene}; {event} in the {where}."


# ---------------------------------------------------------------------------------------
# Many clips
# ---------------------------------------------------------------------------------------


@dataclass
class AnnotationReport:
    out: Path
    written: int  # rows annotated by this call
    already_done: int  # rows found in ``out`` from an earlier (interrupted) run and skipped
    seconds: float


def annotate_file(
    annotator: Annotator, rows_file: Path, out_file: Path, *, video_root: Path | None = None,
    boxes: Mapping[str, Mapping[int, tuple[int, int, int, int]]] | None = None, scene: str, frames: int = 8,
    progress: bool = True,
) -> AnnotationReport:
    """Annotate every clip of a release-schema file into ``out_file``: the same rows, with the
    ``think`` and ``answer`` the annotator writes (any the input had are replaced).

    The ground truth comes from each row (``anomaly_type``, ``start``/``end``,
    ``total_frames``, ``path``; ``scene`` unless the row names its own) and, for ``<where>``, from ``boxes``
    (video -> frame -> box, Vad-Reasoning-Mini's boxes.json) or the row's own ``box``
    (``[x0, y0, x1, y1]`` in pixels, for every frame of the span). ``frames`` frames,
    uniformly sampled, are what the captioning model sees.

    Resumable: videos already in ``out_file`` are skipped, and each row is written and
    flushed as soon as it is annotated, so an interruption loses at most the clip in flight
    (and with the API backend not even its finished calls, which are cached).
    """
    rows_file, out_file = Path(rows_file), Path(out_file)
    root = Path(video_root) if video_root is not None else rows_file.parent
    rows = [json.loads(line) for line in rows_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    done = set()
    if out_file.is_file():
        done = {json.loads(line)["video"] for line in out_file.read_text(encoding="utf-8").splitlines() if line.strip()}
    todo = [row for row in rows if row["video"] not in done]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with out_file.open("a", encoding="utf-8") as out:
        for row in track(todo, f"annotate {rows_file.name}", "clip", enabled=progress):
            path = dataset.remap_video_path(row["path"], root)
            info = video.read_video_info(path)
            indices = video.uniform_frame_indices(row.get("total_frames", info.num_frames), frames)
            category = taxonomy.normalize_label(row["anomaly_type"])
            start, end = row.get("start"), row.get("end")
            clip_boxes = (boxes or {}).get(row["video"])
            if clip_boxes is None and "box" in row and start is not None and end is not None:
                clip_boxes = {frame: tuple(row["box"]) for frame in range(start, end)}
            facts = ClipFacts(video_id=row["video"], total_frames=row.get("total_frames", info.num_frames), fps=info.fps,
                              width=info.width, height=info.height, scene=row.get("scene", scene), category=category,
                              start_frame=start, end_frame=end, boxes=clip_boxes or {})
            clip = video.load_clip(path, indices)
            annotation = annotator.annotate(facts, clip.frames, frame_indices=indices)
            out.write(json.dumps({**row, **annotation.to_row()}, ensure_ascii=False) + "\n")
            out.flush()
    return AnnotationReport(out_file, len(todo), len(rows) - len(todo), time.perf_counter() - began)
