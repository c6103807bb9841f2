"""The tiny model's reading before it watches: a text corpus written by the project.

Qwen2.5-VL-7B has read a great deal of English before its first anomaly video; a tiny
model built here starts from random weights. Trained from there on 64 clips it has to
learn English, the answer template and the task at once, and it wrote template salad
(``docs/measurements.md``, "A base that has read"). This module writes the stand-in for that
reading: incident reports and "nothing happened" reports in the annotation's own words, by
the same :class:`~vadr1_lib.data.annotate.OfflineAnnotator` that writes Vad-Reasoning-Mini,
over *random facts* (a category, a span, a box) at *other cameras* (:data:`SCENES`).

Why other cameras: every Mini clip's first step names its footage's scene, so no corpus
text can be the text of a Mini clip, and no clip of the test split (or any split) is
described to the model before it is trained and scored on it. Mini's normal answers come
in only eight wordings; with Mini's own scene the corpus would hold them all verbatim.
:func:`pretraining_texts` also drops any reply equal to a text it is told to avoid (the
dataset's targets, and its abnormal clips' answers, which name a clip's category, span and
place), and a test checks the built corpus against every split. A normal answer is one of
four sentences that every normal clip shares, the training targets included, so it
describes no clip in particular and may appear.

Each text is the reply to one of the project's two prompts (the stand-in for an instruct
model's chat training): to the P2C-CoT prompt the whole report, think and answer; to the
direct prompt (a quarter of them) the answer alone. Two kinds (``pretrain.corpus``):

- ``template``: the replies with their tags, ``<think><step1>…</step4></think>`` and the
  tagged answer: the base model then knows the P2C-CoT form before SFT shows it a video.
- ``language``: the same replies with every tag removed: the words, numbers and sentence
  shapes, not the template (closer to a base model that has read English but never seen
  this answer format). Which one the cpu profile uses was measured on the val split
  (``docs/measurements.md``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from vadr1_lib.config import Profile, require_choice
from vadr1_lib.data import drawing, taxonomy
from vadr1_lib.data.annotate import ClipFacts, OfflineAnnotator

# Cameras that are not Mini's (its scene is "a campus path between lawns, ..."): places with
# a walkway, because the phrase banks' events happen on a path or a walkway.
SCENES: tuple[str, ...] = (
    "a shopping street with a wide pavement, filmed by a fixed CCTV camera",
    "a park walkway lined with trees, seen from a lamp post camera",
    "a station forecourt where commuters cross, filmed from above",
    "a riverside promenade, filmed by a fixed security camera",
    "a hospital entrance path, seen by a CCTV camera over the door",
    "a footpath beside a car park, filmed by a fixed camera",
    "a school courtyard crossed by a paved path, seen from a corner camera",
    "a pedestrian bridge, filmed by a camera at one end",
    "a market square with a walkway through it, filmed from a rooftop",
    "a residential lane with a narrow pavement, seen by a doorbell camera",
    "an office plaza with a paved walkway, filmed by a fixed CCTV camera",
    "a bus stop beside a footpath, filmed by a camera across the street",
)
# Share of abnormal reports: an abnormal text is about three times as long as a normal one
# and holds everything a normal one does not (times, a span, a place, causes), so it gets
# most of the reading.
ABNORMAL_SHARE = 0.7
DIRECT_SHARE = 0.25  # replies to the direct prompt: the answer alone
BOX_SIDE_RANGE = (0.25, 0.9)  # a random box's sides as a share of the frame (drawn anomalies are large)
_TAG = re.compile(r"</?(?:think|answer|step\d|which|what|when|where|why|how)>")


@dataclass(frozen=True)
class Reply:
    """One corpus text: the reply the base model reads, and the prompt kind it answers."""

    prompt_kind: str  # a key of vadr1_lib.prompts.PROMPT_KINDS
    text: str


def strip_tags(text: str) -> str:
    """A target's words without the template: every P2C-CoT tag removed."""
    return _TAG.sub("", text)


def random_facts(index: int, rng: np.random.Generator, *, frames: int, fps: float, width: int,
                 height: int) -> ClipFacts:
    """The facts of one imagined clip: a scene from :data:`SCENES`, Normal or one of the drawn
    categories, a span as Mini draws them and one box held over it."""
    scene = SCENES[int(rng.integers(len(SCENES)))]
    video_id = f"pretrain_{index:05d}"
    if rng.random() >= ABNORMAL_SHARE:
        return ClipFacts(video_id, frames, fps, width, height, scene, taxonomy.NORMAL)
    category = drawing.DRAWN_CATEGORIES[int(rng.integers(len(drawing.DRAWN_CATEGORIES)))]
    start, end = drawing.random_span(frames, rng)
    w, h = (max(1, round(side * rng.uniform(*BOX_SIDE_RANGE))) for side in (width, height))
    x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    box = (x0, y0, x0 + w, y0 + h)
    return ClipFacts(video_id, frames, fps, width, height, scene, category, start, end,
                     {frame: box for frame in range(start, end)})


def pretraining_texts(count: int, *, kind: str, seed: int, frames: int, fps: float, width: int, height: int,
                      avoid: Collection[str] = ()) -> list[Reply]:
    """``count`` replies of ``kind`` (a ``pretrain.corpus`` choice) over random facts, none equal to a
    text in ``avoid``, with or without its tags (one that is drawn again is replaced by the next)."""
    require_choice("pretrain.corpus", kind)
    avoided = set(avoid) | {strip_tags(text) for text in avoid}
    annotator = OfflineAnnotator(seed)
    rng = np.random.default_rng([seed, 7])  # 7: not a Mini split code
    no_frames = np.zeros((1, 1, 1, 3), np.uint8)  # captions are not part of a target: one is enough
    texts: list[Reply] = []
    index = 0
    while len(texts) < count:
        if index > 20 * count + 100:
            raise RuntimeError(f"only {len(texts)} of {count} pretraining texts differ from the texts to avoid")
        facts = random_facts(index, rng, frames=frames, fps=fps, width=width, height=height)
        index += 1
        annotation = annotator.annotate(facts, no_frames)
        direct = rng.random() < DIRECT_SHARE
        reply = annotation.answer if direct else annotation.target
        if reply in avoided or strip_tags(reply) in avoided:
            continue
        texts.append(Reply("direct" if direct else "p2c", reply if kind == "template" else strip_tags(reply)))
    return texts


def profile_corpus(profile: Profile, avoid: Sequence[str]) -> list[Reply]:
    """The profile's pretraining corpus (``pretrain`` section), at the profile's clip geometry
    so that the times and spans it writes are the ones Mini's clips have."""
    data, settings = profile.data, profile.pretrain
    return pretraining_texts(settings.corpus_texts, kind=settings.corpus, seed=settings.seed, frames=data.clip_frames,
                             fps=data.clip_fps, width=data.frame_width, height=data.frame_height, avoid=avoid)
