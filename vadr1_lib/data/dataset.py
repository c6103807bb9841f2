"""The Vad-Reasoning JSON Lines schema: typed records, validating loaders, writing, stats.

Two kinds of rows exist (``docs/vad-r1.md``, "Release format"):

- :class:`SFTRecord`: a video with a full P2C-CoT annotation (``think``, ``answer``) and,
  when abnormal, the anomaly's frame span ``start``/``end``.
- :class:`RLRecord`: a video with a video-level weak label only (``solution``).

Our own generated dataset (Vad-Reasoning-Mini) is written in the very same schema, so that
everything downstream works unchanged on either.

Loading is strict. Every row is checked (JSON, fields, types, label, span inside the
video) and a bad row raises :class:`DatasetFormatError` naming the file, the 1-based line
and the reason, because a silently skipped or mis-read row would bias training and
metrics without anyone noticing. ``errors="collect"`` returns the good records together
with every error instead, for looking at dirty files (e.g. ``data stats``).

SFT categories versus RL's binary label
---------------------------------------
SFT answers name the fine-grained category in ``<which>`` ("Traffic Accidents"), while RL
rows and the release's RL accuracy reward only know ``Abnormal``/``Normal``. We keep both:

- SFT targets keep the fine-grained category, so that SFT teaches the model what kind of
  anomaly it sees. ``SFTRecord.category`` is the canonical name (label noise removed,
  see :mod:`vadr1_lib.data.taxonomy`), and fine-grained metrics use it.
- The RL accuracy reward and the detection metrics use the binary view: anything that is
  not Normal counts as Abnormal (:func:`vadr1_lib.data.taxonomy.binary_label`). A
  model that answers "Traffic Accidents" on an RL video labelled Abnormal is right.

Video paths
-----------
The release's ``path`` values are absolute paths on the authors' machine, e.g.
``/media/wbf/VA-Reasoning-SFT/ECVA/1900.mp4`` or
``/media/wbf/VA-Reasoning-RL/SH/Abnormal/01_0015.mp4``. One rule remaps them
(:func:`remap_video_path`): keep the components after the release's top folder (the first
component starting with "VA-Reasoning") and put them under the local video root, giving
``<root>/ECVA/1900.mp4`` and ``<root>/SH/Abnormal/01_0015.mp4``. Keeping the sub folders
(rather than rebuilding ``<root>/<source>/<file>``) matters: normal SFT videos live in
``Normal_XD/``, ``Normal_UCF/``, ... and RL videos in label or scene folders, and file
names can differ from the ``video`` field (``Burglary073`` is ``UCF/Burglary073_x264.mp4``).
Relative paths, as written by our own dataset builder (``videos/abc.mp4``), are resolved
against the root too. The root is ``video_root`` when given, else the JSONL file's folder.
Absolute paths outside any "VA-Reasoning*" folder are kept as they are.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from vadr1_lib.data import taxonomy
from vadr1_lib.data.taxonomy import ABNORMAL, NORMAL

if TYPE_CHECKING:
    import datasets

RELEASE_TOP_FOLDER_PREFIX = "VA-Reasoning"

# Key order of the release's rows; write_jsonl reproduces it so that our files diff cleanly
# against the release's. start/end are left out of normal SFT rows, as in the release.
SFT_KEYS = ("source", "video", "anomaly_type", "start", "end", "total_frames", "path", "think", "answer")
RL_KEYS = ("source", "video", "anomaly_type", "path", "data_type", "solution")

ErrorMode = Literal["raise", "collect"]
StrPath = str | os.PathLike[str]


class DatasetFormatError(ValueError):
    """A row of a dataset file that does not follow the schema; says where and why."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class _RowError(ValueError):
    """A schema violation inside one row; the loader adds file and line."""


@dataclass(frozen=True)
class SFTRecord:
    """One video with a full P2C-CoT annotation.

    ``anomaly_type`` is the raw string of the file (kept so that writing reproduces it);
    ``category`` its canonical name or Normal. ``start``/``end`` are frame indices, None
    exactly when the video is normal.
    """

    source: str
    video: str
    anomaly_type: str
    category: str
    path: Path
    total_frames: int
    think: str
    answer: str
    start: int | None = None
    end: int | None = None

    @property
    def id(self) -> str:
        """The video's key in predictions files and caches: ``source/video`` (names repeat across sources)."""
        return f"{self.source}/{self.video}"

    @property
    def is_abnormal(self) -> bool:
        return self.category != NORMAL

    @property
    def span_fraction(self) -> tuple[float, float] | None:
        """The anomaly span as fractions of the video, rounded as in ``<when>``; None if normal."""
        if self.start is None or self.end is None:
            return None
        return round(self.start / self.total_frames, 3), round(self.end / self.total_frames, 3)

    @property
    def target_text(self) -> str:
        """The SFT training target: the think block, a newline, the answer block."""
        return self.think + "\n" + self.answer


@dataclass(frozen=True)
class RLRecord:
    """One video with a video-level weak label (``solution``), for AVA-GRPO.

    ``category`` is the canonical form of ``anomaly_type``: ABNORMAL for the release, a
    fine-grained category where a generated RL file names one.
    """

    source: str
    video: str
    anomaly_type: str
    category: str
    path: Path
    data_type: str
    solution: str

    @property
    def label(self) -> str:
        """The binary weak label, ABNORMAL or NORMAL, that the accuracy reward compares with."""
        return taxonomy.binary_label(self.solution)

    @property
    def id(self) -> str:
        """The video's key, as for :class:`SFTRecord`."""
        return f"{self.source}/{self.video}"

    @property
    def is_abnormal(self) -> bool:
        return self.label == ABNORMAL


Record = SFTRecord | RLRecord
RecordT = TypeVar("RecordT", SFTRecord, RLRecord)


def remap_video_path(raw: str, video_root: Path) -> Path:
    """Where a row's ``path`` lives locally (rule in the module docstring)."""
    pure = PurePosixPath(raw)
    if not pure.is_absolute():
        return video_root / pure
    parts = pure.parts
    for index, part in enumerate(parts):
        if part.startswith(RELEASE_TOP_FOLDER_PREFIX):
            rest = parts[index + 1 :]
            if not rest:
                raise _RowError(f"path {raw!r} names the release folder, not a video in it")
            return video_root.joinpath(*rest)
    return Path(raw)


def _field(row: Mapping[str, Any], key: str, kind: type) -> Any:
    if key not in row:
        raise _RowError(f"missing field {key!r}")
    value = row[key]
    # bool is an int subclass; a true/false frame count is a bug, not a number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _RowError(f"field {key!r} must be {kind.__name__}, got {type(value).__name__}: {value!r}")
    if isinstance(value, str) and not value.strip():
        raise _RowError(f"field {key!r} is empty")
    return value


def _optional_int(row: Mapping[str, Any], key: str) -> int | None:
    return None if row.get(key) is None else _field(row, key, int)


def parse_sft_row(row: Mapping[str, Any], video_root: Path) -> SFTRecord:
    """Validate one SFT row and build its record; raises ValueError saying what is wrong."""
    anomaly_type = _field(row, "anomaly_type", str)
    category = taxonomy.normalize_label(anomaly_type)
    if category == ABNORMAL:
        raise _RowError("an SFT row needs a category or Normal, not the binary label 'Abnormal'")
    total_frames = _field(row, "total_frames", int)
    if total_frames <= 0:
        raise _RowError(f"total_frames must be positive, got {total_frames}")
    start, end = _optional_int(row, "start"), _optional_int(row, "end")
    if category == NORMAL:
        if start is not None or end is not None:
            raise _RowError(f"normal row carries an anomaly span start={start} end={end}")
    else:
        if start is None or end is None:
            raise _RowError(f"abnormal row ({category}) lacks start/end")
        if start < 0 or start >= end:
            raise _RowError(f"span start={start} end={end} is empty or reversed")
        if end > total_frames:
            raise _RowError(f"span end={end} lies beyond total_frames={total_frames}")
    return SFTRecord(
        source=_field(row, "source", str),
        video=_field(row, "video", str),
        anomaly_type=anomaly_type,
        category=category,
        path=remap_video_path(_field(row, "path", str), video_root),
        total_frames=total_frames,
        think=_field(row, "think", str),
        answer=_field(row, "answer", str),
        start=start,
        end=end,
    )


def parse_rl_row(row: Mapping[str, Any], video_root: Path) -> RLRecord:
    """Validate one RL row and build its record; raises ValueError saying what is wrong."""
    anomaly_type = _field(row, "anomaly_type", str)
    category = taxonomy.normalize_label(anomaly_type)
    solution = _field(row, "solution", str)
    label = taxonomy.normalize_label(solution)
    if label not in (ABNORMAL, NORMAL):
        raise _RowError(f"solution must be Abnormal or Normal, got {solution!r}")
    if label != taxonomy.binary_label(category):
        raise _RowError(f"anomaly_type {anomaly_type!r} contradicts solution {solution!r}")
    data_type = _field(row, "data_type", str)
    if data_type != "video":
        raise _RowError(f"data_type must be 'video', got {data_type!r}")
    return RLRecord(
        source=_field(row, "source", str),
        video=_field(row, "video", str),
        anomaly_type=anomaly_type,
        category=category,
        path=remap_video_path(_field(row, "path", str), video_root),
        data_type=data_type,
        solution=solution,
    )


def _load(
    path: StrPath,
    parse_row: Callable[[Mapping[str, Any], Path], RecordT],
    video_root: StrPath | None,
    errors: ErrorMode,
) -> tuple[list[RecordT], list[DatasetFormatError]]:
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    path = Path(path)
    root = Path(video_root) if video_root is not None else path.parent
    records: list[RecordT] = []
    problems: list[DatasetFormatError] = []
    with path.open("rb") as file:
        for line_number, raw_line in enumerate(file, start=1):
            if not raw_line.strip():
                continue  # blank lines (a trailing newline) are not rows
            try:
                row = json.loads(raw_line.decode("utf-8"))
                if not isinstance(row, dict):
                    raise _RowError(f"row must be a JSON object, got {type(row).__name__}")
                records.append(parse_row(row, root))
            except UnicodeDecodeError as error:
                problem = DatasetFormatError(path, line_number, f"not UTF-8: {error.reason}")
            except json.JSONDecodeError as error:
                problem = DatasetFormatError(path, line_number, f"invalid JSON: {error.msg} at column {error.colno}")
            except (_RowError, taxonomy.UnknownLabelError) as error:
                problem = DatasetFormatError(path, line_number, str(error))
            else:
                continue
            if errors == "raise":
                raise problem
            problems.append(problem)
    return records, problems


@overload
def load_sft(
    path: StrPath, *, video_root: StrPath | None = None, errors: Literal["raise"] = "raise"
) -> list[SFTRecord]: ...
@overload
def load_sft(
    path: StrPath, *, video_root: StrPath | None = None, errors: Literal["collect"]
) -> tuple[list[SFTRecord], list[DatasetFormatError]]: ...
def load_sft(
    path: StrPath, *, video_root: StrPath | None = None, errors: ErrorMode = "raise"
) -> list[SFTRecord] | tuple[list[SFTRecord], list[DatasetFormatError]]:
    """Read an SFT JSONL file. ``errors="collect"`` returns (good records, errors) instead of raising."""
    records, problems = _load(path, parse_sft_row, video_root, errors)
    return (records, problems) if errors == "collect" else records


@overload
def load_rl(
    path: StrPath, *, video_root: StrPath | None = None, errors: Literal["raise"] = "raise"
) -> list[RLRecord]: ...
@overload
def load_rl(
    path: StrPath, *, video_root: StrPath | None = None, errors: Literal["collect"]
) -> tuple[list[RLRecord], list[DatasetFormatError]]: ...
def load_rl(
    path: StrPath, *, video_root: StrPath | None = None, errors: ErrorMode = "raise"
) -> list[RLRecord] | tuple[list[RLRecord], list[DatasetFormatError]]:
    """Read an RL JSONL file. ``errors="collect"`` returns (good records, errors) instead of raising."""
    records, problems = _load(path, parse_rl_row, video_root, errors)
    return (records, problems) if errors == "collect" else records


def load_split(path: StrPath, *, video_root: StrPath | None = None) -> list[SFTRecord] | list[RLRecord]:
    """Load a release-format file of either kind: rows with ``think`` are SFT/test rows, others RL rows."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        first_line = next((line for line in handle if line.strip()), None)
    if first_line is None:
        raise DatasetFormatError(path, 1, "no rows")
    try:
        has_think = "think" in json.loads(first_line)
    except json.JSONDecodeError:
        has_think = True  # let the SFT loader report the bad line with its number
    return load_sft(path, video_root=video_root) if has_think else load_rl(path, video_root=video_root)


def missing_videos(records: Iterable[Record]) -> list[Path]:
    """The video paths of the records that are not files on this machine, in record order.

    ``os.path.isfile`` rather than ``Path.is_file`` because it answers False instead of
    raising on unreadable locations, so one bad mount cannot stop the check.
    """
    return [record.path for record in records if not os.path.isfile(record.path)]


def record_to_row(record: Record, path_str: str) -> dict[str, Any]:
    """The record as a release-schema row (key order of the release), with ``path`` = path_str."""
    values: dict[str, Any] = {**record.__dict__, "path": path_str}
    keys = SFT_KEYS if isinstance(record, SFTRecord) else RL_KEYS
    return {key: values[key] for key in keys if values[key] is not None}


def _portable_path(video: Path, folder: Path) -> str:
    """The path to write: relative to the JSONL's folder when the video lies inside it, so
    that a dataset folder can be moved as a whole; absolute otherwise. Symlinks are left
    unresolved: a video root that is a link into scratch space should stay that link."""
    video, folder = Path(os.path.abspath(video)), Path(os.path.abspath(folder))
    return video.relative_to(folder).as_posix() if video.is_relative_to(folder) else str(video)


def write_jsonl(rows: Iterable[Record | Mapping[str, Any]], path: StrPath) -> int:
    """Write records or row dicts as release-schema JSONL; returns the number of rows.

    Dicts are validated exactly as the loaders would (a dict with ``solution`` is an RL row,
    any other an SFT row), so a file this writes always loads; their ``path`` is written as
    given and keys outside the schema follow the schema's keys. Records get their path from
    :func:`_portable_path`. Non-ASCII text is written as is, like the release.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as file:
        for line_number, item in enumerate(rows, start=1):
            if isinstance(item, SFTRecord | RLRecord):
                row = record_to_row(item, _portable_path(item.path, folder))
            else:
                is_rl = "solution" in item
                try:
                    (parse_rl_row if is_rl else parse_sft_row)(item, folder)
                except (_RowError, taxonomy.UnknownLabelError) as error:
                    raise DatasetFormatError(path, line_number, str(error)) from error
                keys = RL_KEYS if is_rl else SFT_KEYS
                row = {key: item[key] for key in keys if item.get(key) is not None}
                row.update((key, value) for key, value in item.items() if key not in keys)
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def to_hf_dataset(records: Sequence[Record]) -> datasets.Dataset:
    """A Hugging Face Dataset of the records' light columns (text, labels, ints, path as str).

    No frames: videos are decoded at collate time, so the table stays small. The schema is
    explicit so that start/end stay int64 columns even when every row is normal.
    """
    import datasets

    if not records:
        raise ValueError("no records to convert")
    kinds = {type(record) for record in records}
    if len(kinds) > 1:
        raise TypeError(f"records mix kinds {sorted(kind.__name__ for kind in kinds)}")
    string, int64 = datasets.Value("string"), datasets.Value("int64")
    if isinstance(records[0], SFTRecord):
        schema = {
            "source": string,
            "video": string,
            "anomaly_type": string,
            "category": string,
            "path": string,
            "total_frames": int64,
            "think": string,
            "answer": string,
            "start": int64,
            "end": int64,
        }
    else:
        schema = {
            "source": string,
            "video": string,
            "anomaly_type": string,
            "category": string,
            "path": string,
            "data_type": string,
            "solution": string,
            "label": string,
        }
    columns = {name: [getattr(record, name) for record in records] for name in schema}
    columns["path"] = [str(path) for path in columns["path"]]
    return datasets.Dataset.from_dict(columns, features=datasets.Features(schema))


_TAG = re.compile(r"<[^>]*>")


def _word_count(text: str) -> int:
    """Words of a CoT text; tags such as <step1> are markup, not words."""
    return len(_TAG.sub(" ", text).split())


def _summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": float(min(values)),
        "mean": statistics.fmean(values),
        "median": float(statistics.median(values)),
        "max": float(max(values)),
    }


def dataset_stats(records: Sequence[Record], count_tokens: Callable[[str], int] | None = None) -> dict[str, Any]:
    """Counts and length statistics of a split, for the dataset notebook and ``data stats``.

    Keys: ``rows``, ``abnormal``, ``normal``; ``categories`` (canonical category -> count,
    most frequent first; Normal and the binary Abnormal are not categories, so the release's
    RL split has none); ``sources``; ``span_fraction`` (min/mean/median/max of
    (end - start) / total_frames over abnormal SFT rows); ``think_words``/``answer_words``
    and, when ``count_tokens`` is given, ``think_tokens``/``answer_tokens`` (each
    min/mean/median/max). Summaries are None where a split has no such values (RL rows
    have no spans and no text).
    """
    sft = [record for record in records if isinstance(record, SFTRecord)]
    abnormal = sum(record.is_abnormal for record in records)
    categories = Counter(record.category for record in records if record.category in taxonomy.SUB_CLASSES)
    spans = [(r.end - r.start) / r.total_frames for r in sft if r.start is not None and r.end is not None]
    stats: dict[str, Any] = {
        "rows": len(records),
        "abnormal": abnormal,
        "normal": len(records) - abnormal,
        "categories": dict(categories.most_common()),
        "sources": dict(Counter(record.source for record in records).most_common()),
        "span_fraction": _summary(spans),
        "think_words": _summary([_word_count(record.think) for record in sft]),
        "answer_words": _summary([_word_count(record.answer) for record in sft]),
    }
    if count_tokens is not None:
        stats["think_tokens"] = _summary([count_tokens(record.think) for record in sft])
        stats["answer_tokens"] = _summary([count_tokens(record.answer) for record in sft])
    return stats


def format_stats(stats: Mapping[str, Any]) -> str:
    """``dataset_stats`` as text for the terminal."""
    lines = [f"rows: {stats['rows']}  abnormal: {stats['abnormal']}  normal: {stats['normal']}",
             f"sources: {', '.join(f'{k} {v}' for k, v in stats['sources'].items())}"]
    if stats["categories"]:
        lines.append(f"categories ({len(stats['categories'])} canonical):")
        lines += [f"  {count:5d}  {name}" for name, count in stats["categories"].items()]
    for key in ("span_fraction", "think_words", "answer_words", "think_tokens", "answer_tokens"):
        summary = stats.get(key)
        if summary:
            lines.append(f"{key:14s} " + "  ".join(f"{k} {v:.3g}" for k, v in summary.items()))
    return "\n".join(lines)
