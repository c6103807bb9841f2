"""The Vad-Reasoning anomaly taxonomy and label normalisation.

The paper counts 3 types, 12 main classes and 37 sub classes, but its list (``docs/vad-r1.md``,
"Taxonomy"), and so this module, groups the 37 sub classes under 10 named main classes; the two
missing main-class names are not known to us, and inventing them would be guessing. Only
the sub classes appear as labels: in the release's ``anomaly_type`` and inside ``<which>``.

The release's labels are noisy: 43 raw strings name 37 categories ("Red Lgiht Violation",
a zero-width space in "Avalanche and \\u200bLandslide", "Drown" beside "Drowning", ...).
Counting categories, computing fine-grained metrics or matching a model's ``<which>``
against the ground truth all need one canonical name per category, so every label goes
through :func:`normalize_label`. It is deliberately not fuzzy: a label maps only when its
normalisation key (case-folded, zero-width characters removed, hyphens/underscores and runs
of whitespace turned into one space) equals the key of a canonical name or of an entry in
the explicit alias table. A near miss that is not listed raises :class:`UnknownLabelError`,
so a new kind of noise shows up as an error instead of silently landing in the wrong class.

Canonical names are the release's majority spellings in Title Case, with one exception:
"Animals Hurt Human" (12 rows) is preferred over the more frequent "Animal Hurts Human"
(29 rows) so that the three Animal sub classes read alike ("Animals in Urban Areas",
"Animals Obstructing Traffic").

Besides the 37 sub classes there are three non-category labels:

- :data:`NORMAL` ("Normal"): nothing abnormal happens.
- :data:`ABNORMAL` ("Abnormal"): the binary weak label of the RL split. It says *that*
  something abnormal happens but not *what*, so it is a valid label but not a sub class.
- :data:`UNKNOWN` ("Unknown"): returned only by ``normalize_label(..., lenient=True)`` for
  a string that names nothing, e.g. a malformed ``<which>`` in a model's completion.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from vadr1_lib.prompts import ABNORMAL_LABEL, NORMAL_LABEL

NORMAL = NORMAL_LABEL  # the verdict words of the answer template, one definition (vadr1_lib.prompts)
ABNORMAL = ABNORMAL_LABEL
UNKNOWN = "Unknown"

# type -> main class -> sub classes, in the order of the paper's taxonomy figure.
TAXONOMY: dict[str, dict[str, tuple[str, ...]]] = {
    "Human Activity": {
        "Crime": ("Stealing", "Robbery", "Arson", "Vandalism", "Shooting"),
        "Health and Security": ("Falling", "Hurt", "Drowning"),
        "Violence": ("Fighting", "Riot", "Abuse"),
        "Unusual Crowd": ("Parade", "Tread"),
    },
    "Environment": {
        "Pollution": ("Fire", "Air Pollution", "Water Pollution"),
        "Building and Facility": ("Electrical Failures", "Explosion", "Building Collapse"),
        "Natural Disaster": ("Sandstorm", "Tornado", "Avalanche and Landslide", "Flooding or Tsunami"),
        "Traffic": (
            "Wrong-Way Driving",
            "Red Light Violation",
            "Illegal Lane Changing",
            "Illegal Parking",
            "Traffic Accidents",
            "Pedestrian Jaywalking",
        ),
    },
    "Objects": {
        "Animal": ("Animals in Urban Areas", "Animals Obstructing Traffic", "Animals Hurt Human"),
        "Misplaced or Unusual Object": (
            "Falling Objects",
            "Dangerous Items",
            "Obstructing Tactile Paving",
            "Obstacles on Railway",
            "Obstacles on Road",
        ),
    },
}


@dataclass(frozen=True)
class SubClass:
    """One of the 37 anomaly categories, with its place in the tree."""

    name: str
    main_class: str
    type: str


SUB_CLASSES: dict[str, SubClass] = {
    sub: SubClass(name=sub, main_class=main, type=type_name)
    for type_name, mains in TAXONOMY.items()
    for main, subs in mains.items()
    for sub in subs
}
CATEGORIES: tuple[str, ...] = tuple(SUB_CLASSES)
MAIN_CLASSES: tuple[str, ...] = tuple(main for mains in TAXONOMY.values() for main in mains)
TYPES: tuple[str, ...] = tuple(TAXONOMY)

# Spellings that differ from a canonical name by more than case, spacing or zero-width
# characters. Each entry is a known variant (the release's own noise, or the wording of the
# paper's taxonomy), never a guess.
ALIASES: dict[str, str] = {
    "Animal Hurts Human": "Animals Hurt Human",  # release, 29 rows
    "Animals Hurting Humans": "Animals Hurt Human",  # paper's wording
    "Drown": "Drowning",  # release, 8 rows
    "Red Lgiht Violation": "Red Light Violation",  # release typo, 7 rows
    "Trampling": "Tread",  # paper's gloss of the class
}

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_SEPARATORS = re.compile(r"[\s\-_]+")


def label_key(raw: str) -> str:
    """The comparison key of a label: case, spacing, hyphens and invisible characters removed.

    "Wrong-Way Driving", " wrong way  driving" and "Wrong\\u200b-Way Driving" share one key.
    """
    text = unicodedata.normalize("NFKC", raw).translate(_ZERO_WIDTH)
    return _SEPARATORS.sub(" ", text).strip().casefold()


_KEY_TO_LABEL: dict[str, str] = {
    **{label_key(name): name for name in (*CATEGORIES, NORMAL, ABNORMAL)},
    **{label_key(alias): name for alias, name in ALIASES.items()},
}


class UnknownLabelError(ValueError):
    """A label that is neither a category, Normal, Abnormal nor a listed alias."""

    def __init__(self, label: str) -> None:
        super().__init__(f"unknown anomaly label {label!r}")
        self.label = label


@lru_cache(maxsize=4096)
def normalize_label(raw: str, *, lenient: bool = False) -> str:
    """Map a raw label to a canonical category name, NORMAL or ABNORMAL.

    Strict by default (raises :class:`UnknownLabelError`) because a dataset label that does
    not map is a data error; ``lenient=True`` returns :data:`UNKNOWN` instead, for parsing
    model outputs, where a nonsense ``<which>`` is a fact to count, not a crash.
    """
    if not isinstance(raw, str):
        raise TypeError(f"label must be a str, got {type(raw).__name__}: {raw!r}")
    label = _KEY_TO_LABEL.get(label_key(raw))
    if label is not None:
        return label
    if lenient:
        return UNKNOWN
    raise UnknownLabelError(raw)


def sub_class_of(label: str) -> SubClass:
    """The taxonomy entry of a label (raw spellings allowed); Normal/Abnormal have none."""
    name = normalize_label(label)
    if name not in SUB_CLASSES:
        raise ValueError(f"label {label!r} ({name}) is not an anomaly category, so it has no place in the taxonomy")
    return SUB_CLASSES[name]


def main_class_of(label: str) -> str:
    """The main class of a category, e.g. "Red Lgiht Violation" -> "Traffic"."""
    return sub_class_of(label).main_class


def type_of(label: str) -> str:
    """The type of a category, e.g. "Drown" -> "Human Activity"."""
    return sub_class_of(label).type


def binary_label(label: str) -> str:
    """The binary view of a label, defined once for data and rewards: NORMAL or ABNORMAL.

    This is how SFT's fine-grained categories and RL's Abnormal/Normal weak labels meet: a
    category and ABNORMAL are ABNORMAL. Case, spacing and the release's label noise are
    forgiven ("normal " is Normal), but a label that is none of these raises
    :class:`UnknownLabelError`: it is a data error, not a verdict. (How a *prediction* is
    read, strictly as the release or leniently, is :mod:`vadr1_lib.parsing`'s business.)
    """
    return NORMAL if normalize_label(label) == NORMAL else ABNORMAL


@dataclass(frozen=True)
class LabelCounts:
    """Counts of normalised labels, plus the raw strings that did not map.

    ``counts`` holds canonical names (and UNKNOWN when any label failed); ``unknown_raw``
    keeps each failing raw string so that a report can show what went wrong.
    """

    counts: Counter[str]
    unknown_raw: Counter[str]

    @property
    def unknown(self) -> int:
        return sum(self.unknown_raw.values())


def count_labels(raw_labels: Iterable[str]) -> LabelCounts:
    """Normalise labels leniently and count them, for dirty inputs such as model outputs."""
    counts: Counter[str] = Counter()
    unknown_raw: Counter[str] = Counter()
    for raw in raw_labels:
        label = normalize_label(raw, lenient=True)
        counts[label] += 1
        if label == UNKNOWN:
            unknown_raw[raw] += 1
    return LabelCounts(counts=counts, unknown_raw=unknown_raw)
