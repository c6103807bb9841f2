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

import base64
import functools
import hashlib
import http.client
import json
import logging
import math
import os
import random
import re
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from vadr1_lib import paths
from vadr1_lib.data import taxonomy
from vadr1_lib.data.video import uniform_frame_indices
from vadr1_lib.prompts import (
    NORMAL_LABEL,
    format_answer_abnormal,
    format_answer_normal,
    format_think,
)

logger = logging.getLogger(__name__)

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


def _sampled_frames(
    facts: ClipFacts, frames: np.ndarray, frame_indices: Sequence[int] | None
) -> list[int]:
    """Validate ``frames`` (T, H, W, 3) uint8 and return the video frame index of each."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        got = f"{getattr(frames, 'shape', None)} {getattr(frames, 'dtype', type(frames).__name__)}"
        raise ValueError(f"{facts.video_id}: frames must be a (T, H, W, 3) uint8 array, got {got}")
    if frames.shape[0] == 0:
        raise ValueError(f"{facts.video_id}: no frames to annotate")
    if frame_indices is None:
        return uniform_frame_indices(facts.total_frames, frames.shape[0])
    indices = [int(i) for i in frame_indices]
    if len(indices) != frames.shape[0]:
        raise ValueError(f"{facts.video_id}: {len(indices)} frame indices for {frames.shape[0]} frames")
    if any(not 0 <= i < facts.total_frames for i in indices) or indices != sorted(indices):
        raise ValueError(f"{facts.video_id}: frame indices must be ascending within 0..{facts.total_frames - 1}")
    return indices


def _seconds(frame: int, fps: float) -> str:
    return f"{frame / fps:.1f} s"


# ---------------------------------------------------------------------------------------
# Offline backend
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoryPhrases:
    """Interchangeable wordings for one category; one of each is drawn per clip.

    Every entry is a lowercase clause without final period, because the templates embed
    it mid-sentence: ``events`` completes "In this video, ...", ``whys`` "This is
    considered abnormal because ...", ``hows`` "As a result, ...", ``causes`` "Likely
    caused by ...", ``norms`` "it violates ...".
    """

    events: tuple[str, ...]
    whys: tuple[str, ...]
    causes: tuple[str, ...]
    norms: tuple[str, ...]
    hows: tuple[str, ...]


# Written for the synthetic footage (anomalies drawn into a campus-path CCTV view).
PHRASES: dict[str, CategoryPhrases] = {
    "Fire": CategoryPhrases(
        events=(
            "flames and smoke rise from a spot on the path",
            "a small fire burns on the paved path",
            "a fire flares up on the walkway",
        ),
        whys=("an open fire on a walkway is a clear safety hazard", "fire has no place on a pedestrian path"),
        causes=("a discarded cigarette or burning litter", "careless use of fire nearby"),
        norms=("fire safety rules", "basic fire safety"),
        hows=(
            "passers-by could be burned and the fire could spread",
            "people nearby are put at risk of burns and smoke",
        ),
    ),
    "Explosion": CategoryPhrases(
        events=(
            "a sudden blast throws out fire and debris",
            "an explosion bursts on the path with a bright flash",
            "something explodes with a flash and a burst of smoke",
        ),
        whys=(
            "a blast in a public place is sudden and violent",
            "explosions never happen in normal campus life",
        ),
        causes=("a gas leak or a faulty device", "a hazardous object left on the path"),
        norms=("public safety rules", "rules on hazardous materials"),
        hows=(
            "people nearby could be injured by the blast and debris",
            "the blast can injure passers-by and damage property",
        ),
    ),
    "Falling Objects": CategoryPhrases(
        events=(
            "an object drops from above onto the path",
            "something falls from overhead and hits the ground",
            "an object falls onto the walkway from above",
        ),
        whys=("objects should not fall onto a busy walkway", "a falling object can strike people below"),
        causes=("a loose item on a building or a careless drop", "poorly secured items overhead"),
        norms=("rules for securing objects at height", "building safety rules"),
        hows=("a pedestrian below could be struck and hurt", "people walking below are at risk of injury"),
    ),
    "Obstacles on Road": CategoryPhrases(
        events=(
            "an object lies on the path and blocks the way",
            "an obstacle appears in the middle of the walkway",
            "a large object is left lying across the path",
        ),
        whys=("the path should stay clear for people passing", "an obstacle on a walkway can trip people"),
        causes=("careless dumping or cargo falling off a cart", "someone leaving debris behind"),
        norms=("the rule to keep public paths clear", "rules against blocking public ways"),
        hows=("passers-by may trip or have to walk around it", "people and bikes could run into it"),
    ),
    "Flooding or Tsunami": CategoryPhrases(
        events=(
            "water spreads over the path and floods it",
            "the walkway fills with rising water",
            "flood water covers part of the path",
        ),
        whys=("a dry path should not suddenly fill with water", "flooding makes the walkway unsafe"),
        causes=("heavy rain or a burst water pipe", "a blocked drain or a broken pipe"),
        norms=("drainage and maintenance standards", "the upkeep expected of public paths"),
        hows=(
            "people may slip and the path becomes impassable",
            "passers-by could slip and property could be damaged",
        ),
    ),
    "Electrical Failures": CategoryPhrases(
        events=(
            "sparks burst from electrical equipment by the path",
            "a light fixture sparks and flickers",
            "electric sparks flash near the walkway",
        ),
        whys=(
            "sparking equipment signals a dangerous electrical fault",
            "electrical equipment should never spark in public",
        ),
        causes=("damaged wiring or an overloaded circuit", "worn cables or water in the equipment"),
        norms=("electrical safety standards", "maintenance rules for public wiring"),
        hows=(
            "passers-by risk electric shock and a fire could start",
            "it may cause shocks, a fire or a power cut",
        ),
    ),
    "Air Pollution": CategoryPhrases(
        events=(
            "thick smoke drifts across the path",
            "a cloud of haze spreads over the walkway",
            "dense smoke fills part of the scene",
        ),
        whys=("thick smoke in open air signals pollution", "the air over a walkway should be clear"),
        causes=("burning waste or a nearby exhaust", "open burning or an industrial leak"),
        norms=("air quality rules", "rules against open burning"),
        hows=("people nearby breathe harmful air and see less", "it harms health and lowers visibility"),
    ),
    "Wrong-Way Driving": CategoryPhrases(
        events=(
            "a vehicle drives the wrong way along the path",
            "a car moves against the direction of travel",
            "a vehicle heads against the flow of traffic",
        ),
        whys=("vehicles must follow the set direction of travel", "driving against the flow is forbidden"),
        causes=("a careless or confused driver", "a driver ignoring direction signs"),
        norms=("traffic rules", "the rules of the road"),
        hows=(
            "it can cause head-on crashes and endanger pedestrians",
            "other road users face a risk of collision",
        ),
    ),
    "Illegal Parking": CategoryPhrases(
        events=(
            "a vehicle stops and stays parked on the path",
            "a car is left parked on the walkway",
            "a vehicle parks where parking is not allowed",
        ),
        whys=("vehicles may not park on a pedestrian path", "parking here blocks a path meant for walking"),
        causes=("a driver wanting a quick stop", "a driver ignoring parking signs"),
        norms=("parking regulations", "the rule that walkways are for pedestrians"),
        hows=(
            "pedestrians are blocked and must walk around it",
            "it obstructs passers-by and emergency access",
        ),
    ),
    "Animals in Urban Areas": CategoryPhrases(
        events=(
            "a large animal wanders onto the path",
            "an animal roams across the walkway",
            "a wild animal appears among the passers-by",
        ),
        whys=(
            "wild animals are not expected on a busy campus path",
            "an animal loose on a walkway is out of place",
        ),
        causes=("an animal straying from nearby green space", "an escaped or wandering animal"),
        norms=("rules for keeping animals under control", "public safety expectations"),
        hows=("people may be startled, bitten or hurt", "it may frighten or injure passers-by"),
    ),
}


def phrases_for(category: str) -> CategoryPhrases:
    """The category's own phrase bank, or a generic one that names the category.

    The fallback keeps any of the 37 categories annotatable (and format-valid) before
    someone writes its specific wording; its text is blander, not wrong.
    """
    if category in PHRASES:
        return PHRASES[category]
    if category not in taxonomy.SUB_CLASSES:
        raise ValueError(f"{category!r} is not an anomaly category")
    name = category.lower()
    main = taxonomy.main_class_of(category).lower()
    return CategoryPhrases(
        events=(f"an incident of {name} occurs", f"signs of {name} appear"),
        whys=(
            f"{name} disrupts the normal order of this place",
            f"such {main} incidents are not part of routine activity",
        ),
        causes=("an unexpected lapse in safety or conduct", "circumstances outside the normal routine"),
        norms=("public safety rules", "the norms of safe public behavior"),
        hows=("people nearby could be harmed or disturbed", "it may cause harm and disorder"),
    )


# One "prompt" per P2C-CoT step, as in the paper; each is a list of interchangeable
# sentence templates. Placeholders: scene, event, where, t0/t1 (seconds), why, category,
# cause, norm, how.
#
# Why so few and so short: these texts are what the student profile's ~1M-parameter model
# must learn to write, and on 2 CPU cores every target token is paid for in each step
# (the first version, three wordings per step and the release's longer sentences, gave
# 260-token abnormal targets and a model that learned the wording but not the video).
# Step 1 is the same sentence for normal and abnormal clips: global perception describes
# the scene, not the verdict, so the verdict is first written at the start of step 2,
# one place where the model has to look at the video to continue.
_SCENE_STEP_TEMPLATES: tuple[str, ...] = ("The video shows {scene}.",)  # step 1 of both forms
_ABNORMAL_STEP_TEMPLATES: tuple[tuple[str, ...], ...] = (
    _SCENE_STEP_TEMPLATES,  # global perception: the scene; no anomaly, no verdict
    (  # local perception: the event, when, where; no judgement
        "At {t0}, {event} in the {where}.",
        "From {t0} to {t1}, {event} in the {where}.",
    ),
    (  # shallow cognition: why abnormal, the category
        "{Why}, so its category is {category}.",
    ),
    (  # deep cognition: causes, violated norms, consequences
        "Likely caused by {cause}, it violates {norm}; {how}.",
    ),
)
_NORMAL_STEP_TEMPLATES: tuple[tuple[str, ...], ...] = (
    _SCENE_STEP_TEMPLATES,  # the scene and its objects
    (  # why it is normal
        "Nothing unusual happens; people and objects behave as expected.",
        "Nothing unusual happens; the activity is ordinary for this place.",
    ),
)
_NORMAL_WHATS = (
    "only routine activity takes place",
    "the scene stays calm and orderly",
)
_NORMAL_WHYS = (
    "no hazard, crime or disruption appears",
    "people and objects behave as expected",
)


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
        indices = _sampled_frames(facts, frames, frame_indices)
        rng = random.Random(f"vadr1-annotate:{self.seed}:{facts.video_id}")
        if facts.is_normal:
            return self._normal(facts, indices, rng)
        return self._abnormal(facts, indices, rng)

    def _normal(self, facts: ClipFacts, indices: list[int], rng: random.Random) -> Annotation:
        captions = tuple(self._caption(facts, i, event="") for i in indices)
        steps = tuple(rng.choice(templates).format(scene=facts.scene) for templates in _NORMAL_STEP_TEMPLATES)
        return Annotation(
            video_id=facts.video_id,
            captions=captions,
            steps=steps,
            which=NORMAL_LABEL,
            what=rng.choice(_NORMAL_WHATS),
            why=rng.choice(_NORMAL_WHYS),
        )

    def _abnormal(self, facts: ClipFacts, indices: list[int], rng: random.Random) -> Annotation:
        bank = phrases_for(facts.category)
        words = {
            "scene": facts.scene,
            "event": rng.choice(bank.events),
            "where": where_words(facts.typical_box(), facts.width, facts.height),
            "t0": _seconds(facts.start_frame, facts.fps),
            "t1": _seconds(facts.end_frame, facts.fps),
            "why": rng.choice(bank.whys),
            "category": facts.category,
            "cause": rng.choice(bank.causes),
            "norm": rng.choice(bank.norms),
            "how": rng.choice(bank.hows),
        }
        words["Why"] = _capitalized(words["why"])
        captions = tuple(self._caption(facts, i, words["event"]) for i in indices)
        steps = tuple(rng.choice(templates).format(**words) for templates in _ABNORMAL_STEP_TEMPLATES)
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
        scene = f"{_seconds(frame, facts.fps)}: {_capitalized(facts.scene)}"
        if not facts.shows_anomaly(frame):
            return f"{scene}; nothing unusual is visible."
        where = where_words(facts.box_near(frame), facts.width, facts.height)
        return f"{scene}; {event} in the {where}."


# ---------------------------------------------------------------------------------------
# DashScope backend (Qwen-VL-Max captions, Qwen-Max steps), OpenAI-compatible API
# ---------------------------------------------------------------------------------------

API_KEY_ENV = "DASHSCOPE_API_KEY"
DASHSCOPE_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
_RETRYABLE_TRANSPORT_ERRORS = (TimeoutError, ConnectionError, urllib.error.URLError, http.client.HTTPException)
_SAFE_VIDEO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TEMPLATE_TAG = re.compile(r"</?(?:think|answer|step[1-9]|which|what|when|where|why|how)>")
_CAPTION_LINE = re.compile(r"^\s*(?:frame\s*)?(\d+)\s*[:.)\-]\s*(.+?)\s*$", re.IGNORECASE)

_SYSTEM = "You are a careful annotator of surveillance videos. You write plain, factual English."
_STYLE = "Reply with one or two plain sentences: no tags, no lists, no markdown."
_ABNORMAL_STEP_INSTRUCTIONS = (
    "Write step 1, global perception: the scene, the environment, the main objects and what "
    "normal activity looks like here. Do not mention the anomaly.",
    "Write step 2, local perception: the suspicious event, when it appears and roughly where "
    "in the frame, without judging it.",
    "Write step 3, shallow cognition: why the event is abnormal; name its category, {category}.",
    "Write step 4, deep cognition: the likely causes, the social norms or rules it violates, "
    "and its consequences.",
)
_NORMAL_STEP_INSTRUCTIONS = (
    "Write step 1: the scene, the environment and the objects in it.",
    "Write step 2: why the video is normal.",
)
_ABNORMAL_ANSWER_INSTRUCTION = (
    'Summarise the annotation as a JSON object with three string fields: "what" (the event, '
    'a clause that completes "In this video, ..."), "why" (a clause that completes "This is '
    'considered abnormal because ..."), "how" (the harm or violated norm, a clause that '
    'completes "As a result, ..."). Reply with the JSON object only.'
)
_NORMAL_ANSWER_INSTRUCTION = (
    'Summarise the annotation as a JSON object with two string fields: "what" (the scene and '
    'activity, a clause that completes "In this video, ..."), "why" (a clause that completes '
    '"This is considered normal because ..."). Reply with the JSON object only.'
)


class MissingAPIKeyError(RuntimeError):
    """No DashScope key: the environment variable is unset or empty."""


class DashScopeError(RuntimeError):
    """A call that failed for good: a non-retryable HTTP status, retries used up, or a
    reply that cannot be used. ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _CallCache:
    """One video's finished API calls, as JSON: call name -> request hash and reply.

    The whole file is rewritten (temporary file, then rename) after every finished call,
    so an interruption loses at most the call in flight and never leaves a torn file. A
    reply is reused only for a byte-identical request (same model, prompt and frames),
    so changed facts or prompts are asked again instead of served stale.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: dict[str, dict[str, str]] = {}
        if path.is_file():
            try:
                self.calls = json.loads(path.read_text(encoding="utf-8"))["calls"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"annotation cache {path} is unreadable ({error}); delete it to start over") from error

    def get(self, name: str, request_hash: str) -> str | None:
        entry = self.calls.get(name)
        return entry["content"] if entry is not None and entry.get("request_sha256") == request_hash else None

    def put(self, name: str, request_hash: str, content: str) -> None:
        self.calls[name] = {"request_sha256": request_hash, "content": content}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp")
        tmp.write_text(json.dumps({"calls": self.calls}, ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(self.path)


def _error_message(body: bytes) -> str:
    """The message of an error reply (OpenAI shape ``{"error": {"message"}}`` or DashScope's)."""
    text = body.decode("utf-8", errors="replace")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return text[:500] or "(empty body)"
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if payload.get("message"):
            return str(payload["message"])
    return text[:500]


def _reply_content(body: bytes, model: str) -> str:
    """``choices[0].message.content`` of a chat-completions reply, as text."""
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as error:
        raise DashScopeError(f"{model}: reply is not a chat completion ({error!r}): {body[:300]!r}") from error
    if isinstance(content, list):  # content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str) or not content.strip():
        raise DashScopeError(f"{model}: reply has no text content")
    return content


def _plain_text(text: str, what: str) -> str:
    """An LLM sentence made safe for the template: tags removed, whitespace collapsed."""
    cleaned = " ".join(_TEMPLATE_TAG.sub(" ", text).split())
    if not cleaned:
        raise DashScopeError(f"{what}: the model returned no usable text: {text!r}")
    return cleaned


def _clause(text: str, what: str) -> str:
    """A field that continues a template sentence: no final period, lowercase start."""
    clause = _plain_text(text, what).rstrip(" .")
    first_word = clause.split(" ", 1)[0]
    if first_word != "I" and first_word[1:] == first_word[1:].lower():  # keep "CCTV", "I"
        clause = clause[:1].lower() + clause[1:]
    if not clause:
        raise DashScopeError(f"{what}: the model returned no usable text: {text!r}")
    return clause


def _parse_captions(content: str, count: int) -> list[str]:
    """One caption per frame from "1: ..." lines (or exactly ``count`` unnumbered lines)."""
    lines = [line for line in content.splitlines() if line.strip()]
    numbered: dict[int, str] = {}
    for line in lines:
        match = _CAPTION_LINE.match(line)
        if match:
            numbered.setdefault(int(match.group(1)), match.group(2))
    if set(numbered) >= set(range(1, count + 1)):
        return [_plain_text(numbered[n], f"caption {n}") for n in range(1, count + 1)]
    if len(lines) == count:
        return [_plain_text(line, "caption") for line in lines]
    raise DashScopeError(f"caption reply does not hold {count} captions: {content[:500]!r}")


def _parse_answer_fields(content: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The JSON object of the answer call (a ```json fence around it is tolerated)."""
    text = content.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as error:
        raise DashScopeError(f"answer reply is not JSON ({error}): {content[:500]!r}") from error
    if not isinstance(fields, dict) or any(not isinstance(fields.get(key), str) for key in keys):
        raise DashScopeError(f"answer reply lacks string fields {keys}: {content[:500]!r}")
    return {key: _clause(fields[key], f"answer field {key!r}") for key in keys}


def _jpeg_data_url(frame: np.ndarray) -> str:
    import cv2  # imported here: only this backend needs OpenCV

    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(frame[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError("could not encode a frame as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _ground_truth(facts: ClipFacts) -> str:
    """The verified facts the text model is told, as the paper's annotators were."""
    if facts.is_normal:
        return "Verified ground truth: the video is normal; nothing abnormal happens."
    start, end = facts.span
    where = where_words(facts.typical_box(), facts.width, facts.height)
    return (
        f"Verified ground truth: the video is abnormal, category {facts.category}. The anomaly "
        f"lasts from {_seconds(facts.start_frame, facts.fps)} to {_seconds(facts.end_frame, facts.fps)} "
        f"(fractions {start} to {end} of the video) and is in the {where}."
    )


class DashScopeAnnotator:
    """The paper's pipeline on DashScope: one VL call for captions, one text call per step,
    one for the answer fields.

    The key comes from ``api_key`` or else the ``DASHSCOPE_API_KEY`` environment variable,
    never from a file, and is sent only in the Authorization header (it appears in no
    message, log or repr). HTTP 429, 5xx, timeouts and connection errors are retried with
    exponential backoff (``backoff_s``, doubled each time, up to ``max_retries`` retries);
    any other HTTP error fails at once with its status and message. Finished calls are
    cached per video under ``cache_dir`` (see :class:`_CallCache`).
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str = DASHSCOPE_BASE_URL,
        caption_model: str = "qwen-vl-max",
        text_model: str = "qwen-max",
        cache_dir: str | os.PathLike[str] | None = None,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        timeout_s: float = 60.0,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        if not key.strip():
            raise MissingAPIKeyError(
                f"no DashScope API key: set the environment variable {API_KEY_ENV} "
                "(or use OfflineAnnotator, which needs none)"
            )
        if max_retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("need max_retries >= 0, backoff_s >= 0 and timeout_s > 0")
        self._api_key = key.strip()
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.caption_model = caption_model
        self.text_model = text_model
        self.cache_dir = Path(cache_dir) if cache_dir is not None else paths.data_dir() / "annotation-cache"
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return (
            f"DashScopeAnnotator(url={self.url!r}, caption_model={self.caption_model!r}, "
            f"text_model={self.text_model!r}, cache_dir={str(self.cache_dir)!r})"
        )

    def annotate(
        self, facts: ClipFacts, frames: np.ndarray, *, frame_indices: Sequence[int] | None = None
    ) -> Annotation:
        indices = _sampled_frames(facts, frames, frame_indices)
        if not _SAFE_VIDEO_ID.fullmatch(facts.video_id):
            raise ValueError(f"video_id {facts.video_id!r} cannot name a cache file (letters, digits, . _ - only)")
        cache = _CallCache(self.cache_dir / f"{facts.video_id}.json")
        captions = self._captions(facts, frames, indices, cache)
        context = "Frame captions (time: caption):\n" + "\n".join(captions) + "\n\n" + _ground_truth(facts)
        instructions = _NORMAL_STEP_INSTRUCTIONS if facts.is_normal else _ABNORMAL_STEP_INSTRUCTIONS
        steps: list[str] = []
        for number, instruction in enumerate(instructions, start=1):
            prompt = f"{context}{_steps_so_far(steps)}\n\n{instruction.format(category=facts.category)} {_STYLE}"
            parse_step = functools.partial(_plain_text, what=f"step {number}")
            steps.append(self._call(cache, f"step{number}", self.text_model, _text_messages(prompt), parse_step))
        keys = ("what", "why") if facts.is_normal else ("what", "why", "how")
        instruction = _NORMAL_ANSWER_INSTRUCTION if facts.is_normal else _ABNORMAL_ANSWER_INSTRUCTION
        prompt = f"{context}{_steps_so_far(steps)}\n\n{instruction}"
        parse_fields = functools.partial(_parse_answer_fields, keys=keys)
        fields = self._call(cache, "answer", self.text_model, _text_messages(prompt), parse_fields)
        common = {
            "video_id": facts.video_id,
            "captions": tuple(captions),
            "steps": tuple(steps),
            "what": fields["what"],
            "why": fields["why"],
        }
        if facts.is_normal:
            return Annotation(which=NORMAL_LABEL, **common)
        where = where_words(facts.typical_box(), facts.width, facts.height)
        return Annotation(which=facts.category, when=facts.span, where=where, how=fields["how"], **common)

    def _captions(self, facts: ClipFacts, frames: np.ndarray, indices: list[int], cache: _CallCache) -> list[str]:
        """Stage (a): one VL call with every sampled frame, each introduced by its time."""
        times = [_seconds(i, facts.fps) for i in indices]
        parts: list[dict[str, Any]] = [{
            "type": "text",
            "text": (
                f"These are {len(indices)} frames sampled in time order from one surveillance video. "
                "Describe each frame in one short factual sentence: the setting, people, vehicles and "
                "objects, and anything unusual with where it is in the frame. Reply with exactly "
                f"{len(indices)} lines of the form '<number>: <caption>' and nothing else."
            ),
        }]
        for number, (frame, seconds) in enumerate(zip(frames, times), start=1):
            parts.append({"type": "text", "text": f"Frame {number} at {seconds}:"})
            parts.append({"type": "image_url", "image_url": {"url": _jpeg_data_url(frame)}})
        messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": parts}]
        parse = functools.partial(_parse_captions, count=len(indices))
        texts = self._call(cache, "captions", self.caption_model, messages, parse)
        return [f"{seconds}: {text}" for seconds, text in zip(times, texts)]

    def _call(
        self, cache: _CallCache, name: str, model: str, messages: list[dict[str, Any]], parse: Callable[[str], Any]
    ) -> Any:
        """One cached call: reuse a finished reply, else ask, check it parses, then store it.

        Only a reply that parses is stored, so a rerun asks again after an unusable one.
        """
        body = {"model": model, "messages": messages}
        request_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()
        content = cache.get(name, request_hash)
        if content is not None:
            return parse(content)
        content = self._post(body)
        parsed = parse(content)
        cache.put(name, request_hash, content)
        return parsed

    def _post(self, body: dict[str, Any]) -> str:
        """POST one chat completion with retries; returns the reply text."""
        model = body["model"]
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"}
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                logger.warning("%s: %s; retry %d/%d in %.1f s", model, last_error, attempt, self.max_retries, delay)
                time.sleep(delay)
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return _reply_content(response.read(), model)
            except urllib.error.HTTPError as error:  # before URLError: it is a subclass
                message = _error_message(error.read())
                if error.code != 429 and error.code < 500:
                    raise DashScopeError(f"{model}: HTTP {error.code}: {message}", status=error.code) from None
                last_error = f"HTTP {error.code}: {message}"
            except _RETRYABLE_TRANSPORT_ERRORS as error:
                reason = getattr(error, "reason", None) or error
                last_error = f"{type(error).__name__}: {reason} (timeout {self.timeout_s} s)"
        raise DashScopeError(f"{model}: gave up after {self.max_retries + 1} attempts; last error: {last_error}")


def _text_messages(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": prompt}]


def _steps_so_far(steps: Sequence[str]) -> str:
    """The steps already written, for the next prompt: each step builds on the ones before."""
    if not steps:
        return ""
    return "\nSteps written so far:" + "".join(f"\nStep {n}: {text}" for n, text in enumerate(steps, start=1))


# ---------------------------------------------------------------------------------------
# Many clips
# ---------------------------------------------------------------------------------------


def annotate_clips(
    annotator: Annotator, items: Iterable[tuple[ClipFacts, np.ndarray]], progress: bool = True
) -> list[Annotation]:
    """Annotate clips in order, with a progress bar (the API backend takes seconds per clip)."""
    total = len(items) if isinstance(items, Sequence) else None
    return [
        annotator.annotate(facts, frames)
        for facts, frames in tqdm(items, total=total, disable=not progress, desc="annotate", unit="clip")
    ]
