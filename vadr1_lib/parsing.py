"""Completion text -> structured answer, plus a strict check of the P2C-CoT template.

Everything downstream reads model output through :func:`parse_completion`: the format and
accuracy rewards, AVA verification, inference and the metrics. Model output is arbitrary
text (a tiny model emits anything, a 7B model truncated at max length emits half a
template), so the parser never raises on a string and runs in linear time: one regex scan
for the known tags, then passes over that tag list. No backtracking-heavy regex is run
on the free text.

Two views of the same text are returned:

- **Lenient fields** (``think``, ``steps``, ``answer``, ``which`` … ``how``, ``span``):
  what a reward or metric needs even from a broken completion. A field is the text
  between the first ``<tag>`` and the first ``</tag>`` after it, the way
  ``re.search(r"<tag>(.*?)</tag>", region, re.S)`` would find it. Answer fields are looked
  up inside ``<answer>`` (up to its close, or to the end of the text when ``</answer>`` is
  missing, so a completion cut at max length still says which class it chose); when there
  is no ``<answer>`` at all, in the whole text.
- **Strict template** (``problems``, ``matches_*_template``): the format reward's rule.
  The whole text must be, apart from surrounding whitespace::

      <think><step1>…</step1> … <stepN>…</stepN></think> <answer>… tags …</answer>

  with only whitespace between the steps and between the two blocks, steps numbered
  1..N in order, and free prose around the answer tags inside ``<answer>``. The normal
  template is N = 2 with ``<which>``, ``<what>``, ``<why>`` (``<which>`` = ``Normal``);
  the abnormal template is N = 4 with ``<which>``, ``<what>``, ``<when>``, ``<where>``,
  ``<why>``, ``<how>``. Each tag appears exactly once, in that order, and no step or tag
  is empty. The answer decides which template applies, so an abnormal answer after a
  two-step think is *not* valid ("wrong step count for abnormal"): the four-step chain is
  the point of P2C-CoT. For the ``"direct"`` prompt kind the text must be the
  ``<answer>`` block alone.

``<when>`` validity is deliberately *not* part of the template: the AVA reward has its
own branch for "abnormal without a valid span", and ``span_problem`` says why ``span`` is
missing.

The label rule (:func:`says_normal_leniently`): a completion is Normal only when ``<which>`` holds
exactly ``Normal`` after stripping surrounding whitespace; anything else, including
``normal``, ``Abnormal``, a category name or no ``<which>`` at all, is Abnormal. This is
the release's evaluation rule made tolerant of whitespace, and it is what the rewards and
the strict figures use; the release's exact reading (no stripping, the first ``<which>``
anywhere in the text) is :func:`vadr1_lib.evaluation.parsing.release_reads_normal`, used only for
the figures that reproduce the release.

Tags are case-sensitive and only ``<step1>`` … ``<step9>`` are recognised as step tags;
any other angle-bracket text is ordinary text.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vadr1_lib.prompts import (
    ABNORMAL_ANSWER_TAGS,
    ABNORMAL_LABEL,
    ABNORMAL_STEP_COUNT,
    BLOCK_TAGS,
    NORMAL_ANSWER_TAGS,
    NORMAL_LABEL,
    NORMAL_STEP_COUNT,
    PROMPT_KINDS,
    STEP_TAGS,
    TEMPLATE_TAG_PATTERN,
)

# A decimal number without exponent; a sign is accepted so that "-0.1" reads as out of range.
_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_SPAN_RE = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]")


def _parent_of(name: str) -> str | None:
    """The block a tag must sit directly inside (None: the top level)."""
    if name in BLOCK_TAGS:
        return None
    return "think" if name in STEP_TAGS else "answer"


@dataclass(frozen=True)
class ParsedCompletion:
    """What one completion says, and whether it follows the template.

    All text fields are stripped; ``None`` means the tag is absent or never closed.
    ``problems`` is empty exactly when the text matches one of the two templates.
    """

    think: str | None
    steps: tuple[str, ...]
    answer: str | None
    which: str | None
    what: str | None
    when_text: str | None
    where: str | None
    why: str | None
    how: str | None
    span: tuple[float, float] | None
    span_problem: str | None
    is_normal: bool
    matches_normal_template: bool
    matches_abnormal_template: bool
    problems: tuple[str, ...]

    @property
    def format_valid(self) -> bool:
        return self.matches_normal_template or self.matches_abnormal_template

    @property
    def predicted_label(self) -> str:
        return NORMAL_LABEL if self.is_normal else ABNORMAL_LABEL


@dataclass(frozen=True, slots=True)
class _Tag:
    closing: bool
    name: str
    start: int
    end: int


class _TagIndex:
    """The tags of one text, with O(1) "matching close" and O(log n) "first open" lookups."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tags = [_Tag(m.group(1) == "/", m.group(2), m.start(), m.end()) for m in TEMPLATE_TAG_PATTERN.finditer(text)]
        self.starts = [tag.start for tag in self.tags]
        # next_close[i]: index of the first closing tag after i with the same name as tag i.
        self.next_close: list[int | None] = [None] * len(self.tags)
        last_close: dict[str, int] = {}
        for i in range(len(self.tags) - 1, -1, -1):
            tag = self.tags[i]
            if tag.closing:
                last_close[tag.name] = i
            else:
                self.next_close[i] = last_close.get(tag.name)
        self.opens: dict[str, list[int]] = {}
        for i, tag in enumerate(self.tags):
            if not tag.closing:
                self.opens.setdefault(tag.name, []).append(i)

    def first_open(self, name: str, lo: int, hi: int) -> int | None:
        """Index of the first ``<name>`` starting in [lo, hi), else None."""
        indices = self.opens.get(name, [])
        k = bisect.bisect_left(indices, bisect.bisect_left(self.starts, lo))
        if k < len(indices) and self.tags[indices[k]].end <= hi:
            return indices[k]
        return None

    def search(self, name: str, lo: int, hi: int) -> tuple[int, int] | None:
        """Character range of ``<name>(.*?)</name>`` inside [lo, hi), like re.search."""
        i = self.first_open(name, lo, hi)
        if i is None:
            return None
        j = self.next_close[i]
        if j is None or self.tags[j].end > hi:
            return None
        return self.tags[i].end, self.tags[j].start

    def block(self, name: str, stop_at: str | None) -> tuple[int, int] | None:
        """Content range of the first ``<name>`` block; unclosed, it runs to ``<stop_at>`` or the end."""
        i = self.first_open(name, 0, len(self.text))
        if i is None:
            return None
        j = self.next_close[i]
        if j is not None:
            return self.tags[i].end, self.tags[j].start
        stop = self.first_open(stop_at, self.tags[i].end, len(self.text)) if stop_at else None
        end = self.tags[stop].start if stop is not None else len(self.text)
        return self.tags[i].end, end

    def steps(self, lo: int, hi: int) -> tuple[str, ...]:
        """Stripped contents of ``<stepN>…</stepN>`` pairs in [lo, hi), in order (findall semantics)."""
        found: list[str] = []
        i = bisect.bisect_left(self.starts, lo)
        while i < len(self.tags) and self.tags[i].end <= hi:
            tag = self.tags[i]
            j = self.next_close[i]
            if not tag.closing and tag.name in STEP_TAGS and j is not None and self.tags[j].end <= hi:
                found.append(self.text[tag.end : self.tags[j].start].strip())
                i = j + 1
            else:
                i += 1
        return tuple(found)


def _parse_span(when_text: str | None) -> tuple[tuple[float, float] | None, str | None]:
    """``[s, e]`` -> (span, None), or (None, why not)."""
    if when_text is None:
        return None, "missing <when>"
    match = _SPAN_RE.fullmatch(when_text)
    if match is None:
        return None, "unparsable <when>"
    start, end = float(match.group(1)), float(match.group(2))  # digits only: never raises
    if not (math.isfinite(start) and math.isfinite(end) and 0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        return None, "out of range"
    if start >= end:
        return None, "empty or reversed"
    return (start, end), None


@dataclass
class _Structure:
    """What the strict pass saw: top-level blocks, steps and answer fields, and problems."""

    blocks: list[str]
    steps: list[tuple[int, str]]
    fields: list[tuple[str, str]]
    problems: list[str]


def _scan_structure(index: _TagIndex) -> _Structure:
    """One stack pass over the tags: nesting, placement, stray and unclosed tags, loose text.

    A close that matches an open further down the stack closes the ones above it (each
    reported unclosed). A counter of open names keeps that check O(1), so the pass is
    linear even for thousands of unbalanced tags.
    """
    text = index.text
    result = _Structure(blocks=[], steps=[], fields=[], problems=[])
    stack: list[tuple[str, int, bool]] = []  # (name, content start, correctly placed)
    open_counts: Counter[str] = Counter()

    def check_loose_text(segment: str) -> None:
        if not segment or segment.isspace():
            return
        container = stack[-1][0] if stack else None
        if container is None:
            result.problems.append("text outside tags")
        elif container == "think":
            result.problems.append("text between steps")

    def close_top(end: int) -> None:
        name, content_start, placed = stack.pop()
        open_counts[name] -= 1
        if placed and name in STEP_TAGS:
            result.steps.append((int(name[4:]), text[content_start:end]))
        elif placed and name not in BLOCK_TAGS:
            result.fields.append((name, text[content_start:end]))

    position = 0
    for tag in index.tags:
        check_loose_text(text[position : tag.start])
        position = tag.end
        if not tag.closing:
            container = stack[-1][0] if stack else None
            placed = container == _parent_of(tag.name)
            if placed and tag.name in BLOCK_TAGS:
                result.blocks.append(tag.name)
            elif not placed:
                leaf_container = container is not None and container not in BLOCK_TAGS
                if leaf_container or tag.name in BLOCK_TAGS:
                    result.problems.append("nested tags")
                else:
                    result.problems.append(f"misplaced <{tag.name}>")
            stack.append((tag.name, tag.end, placed))
            open_counts[tag.name] += 1
        elif open_counts[tag.name] == 0:
            result.problems.append(f"stray </{tag.name}>")
        else:
            while stack[-1][0] != tag.name:
                result.problems.append(f"unclosed <{stack[-1][0]}>")
                close_top(tag.start)
            close_top(tag.start)
    check_loose_text(text[position:])
    while stack:
        result.problems.append(f"unclosed <{stack[-1][0]}>")
        close_top(len(text))
    return result


def _block_problems(blocks: list[str], kind: str) -> list[str]:
    problems: list[str] = []
    wanted = ("think", "answer") if kind == "p2c" else ("answer",)
    for name in BLOCK_TAGS:
        count = blocks.count(name)
        if name not in wanted and count:
            problems.append(f"unexpected <{name}>")
        elif name in wanted and count == 0:
            problems.append(f"missing <{name}>")
        elif count > 1:
            problems.append(f"repeated <{name}>")
    if kind == "p2c" and blocks == ["answer", "think"]:
        problems.append("answer before think")
    return problems


def _step_problems(steps: list[tuple[int, str]], is_normal: bool) -> list[str]:
    problems: list[str] = []
    numbers = [number for number, _ in steps]
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append("steps out of order")
    expected = NORMAL_STEP_COUNT if is_normal else ABNORMAL_STEP_COUNT
    if len(numbers) != expected:
        problems.append(f"wrong step count for {'normal' if is_normal else 'abnormal'}")
    problems.extend(f"empty <step{number}>" for number, content in steps if not content.strip())
    return problems


def _field_problems(fields: list[tuple[str, str]], is_normal: bool) -> list[str]:
    expected = NORMAL_ANSWER_TAGS if is_normal else ABNORMAL_ANSWER_TAGS
    names = [name for name, _ in fields]
    problems = [f"empty <{name}>" for name, content in fields if not content.strip()]
    if tuple(names) == expected:
        return problems
    counts = Counter(names)
    problems += [f"missing <{name}>" for name in expected if counts[name] == 0]
    problems += [f"repeated <{name}>" for name in expected if counts[name] > 1]
    label = "normal" if is_normal else "abnormal"
    problems += [f"unexpected <{name}> in {label} answer" for name in dict.fromkeys(names) if name not in expected]
    present_order = [name for name in dict.fromkeys(names) if name in expected]
    if present_order != [name for name in expected if counts[name]]:
        problems.append("answer tags out of order")
    return problems


# ---------------------------------------------------------------------------------------
# The release's reading of an output (for the figures that reproduce its evaluation)

RELEASE_MISSING_SPAN = (0.0, 0.0)  # what the release reads when <when> is missing or malformed
# Shortest match, across lines; the closing tag is required.
_RELEASE_WHICH = re.compile(r"<which>(.*?)</which>", re.S)
# Digits and dots on each side, optional spaces around the comma only, closing tag required.
_RELEASE_WHEN = re.compile(r"<when>\[([\d.]+)\s*,\s*([\d.]+)\]</when>")


def release_reads_normal(output: str) -> bool:
    """The release's detection rule: the first ``<which>…</which>`` holds exactly ``Normal``.

    No whitespace stripping and no case folding: ``<which> Normal </which>`` and
    ``<which>normal</which>`` are Abnormal, and so is an output without a closed
    ``<which>``. The tag is looked for anywhere in the output, not only inside
    ``<answer>``. (The project's own reading, :func:`says_normal_leniently`,
    forgives surrounding whitespace; it is the one the rewards and the strict figures use.)
    """
    match = _RELEASE_WHICH.search(output)
    return match is not None and match.group(1) == NORMAL_LABEL


def release_reads_span(output: str) -> tuple[float, float]:
    """The release's ``<when>``: the first ``<when>[a, b]</when>`` anywhere in the output.

    a and b are runs of digits and dots, with optional spaces around the comma and none
    elsewhere (``<when> [0.2, 0.6]</when>`` and ``[ 0.2, 0.6 ]`` do not match). Anything
    else, including a run that is not a number such as ``1.2.3``, gives [0, 0]. Values
    are used as they are: no order check (a reversed span scores IoU 0) and no range
    check (``[0.2, 1.5]`` is compared as it stands).
    """
    match = _RELEASE_WHEN.search(output)
    if match is None:
        return RELEASE_MISSING_SPAN
    try:
        return float(match.group(1)), float(match.group(2))
    except ValueError:
        return RELEASE_MISSING_SPAN



def says_normal_leniently(which: str | None) -> bool:
    """The project's label rule, defined once: only an exact ``Normal`` in ``<which>``
    (surrounding whitespace aside) is a Normal answer; anything else, including a missing
    ``<which>``, a category name or ``normal`` in lower case, counts as Abnormal. The
    release's evaluation did not strip whitespace (:func:`vadr1_lib.evaluation.parsing.release_reads_normal`)."""
    return which is not None and which.strip() == NORMAL_LABEL


def parse_completion(text: str, kind: str = "p2c") -> ParsedCompletion:
    """Parse one completion; ``kind`` is the prompt kind it answers ("p2c" or "direct").

    Never raises for a ``str``; raises TypeError for anything else and ValueError for an
    unknown kind, because those are caller bugs rather than model output.
    """
    if not isinstance(text, str):
        raise TypeError(f"completion must be a str, got {type(text).__name__}")
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; valid kinds: {sorted(PROMPT_KINDS)}")
    index = _TagIndex(text)

    think_range = index.block("think", stop_at="answer")
    answer_range = index.block("answer", stop_at=None)
    field_lo, field_hi = answer_range if answer_range is not None else (0, len(text))

    def field(name: str) -> str | None:
        found = index.search(name, field_lo, field_hi)
        return text[found[0] : found[1]].strip() if found is not None else None

    fields = {name: field(name) for name in ABNORMAL_ANSWER_TAGS}
    is_normal = says_normal_leniently(fields["which"])
    span, span_problem = _parse_span(fields["when"])

    structure = _scan_structure(index)
    problems = structure.problems + _block_problems(structure.blocks, kind)
    if kind == "p2c" and "think" in structure.blocks:
        problems += _step_problems(structure.steps, is_normal)
    if "answer" in structure.blocks:
        problems += _field_problems(structure.fields, is_normal)
    unique_problems = tuple(dict.fromkeys(problems))
    valid = not unique_problems

    return ParsedCompletion(
        think=text[think_range[0] : think_range[1]].strip() if think_range is not None else None,
        steps=index.steps(*think_range) if think_range is not None else (),
        answer=text[answer_range[0] : answer_range[1]].strip() if answer_range is not None else None,
        which=fields["which"],
        what=fields["what"],
        when_text=fields["when"],
        where=fields["where"],
        why=fields["why"],
        how=fields["how"],
        span=span,
        span_problem=span_problem,
        is_normal=is_normal,
        matches_normal_template=valid and is_normal,
        matches_abnormal_template=valid and not is_normal,
        problems=unique_problems,
    )


# ---------------------------------------------------------------------------------------
# Checks on real annotation text (the release's SFT file, or data built in its schema)
# ---------------------------------------------------------------------------------------

_EXAMPLES_PER_REASON = 5
SPAN_TOLERANCE = 0.001


class _ValidationTally:
    """Counts for :func:`validate_release_rows`; one instance per file or row stream."""

    def __init__(self) -> None:
        self.rows = 0
        self.format_valid = 0
        self.abnormal_rows = 0
        self.normal_rows = 0
        self.span_checked = 0
        self.span_mismatch = 0
        self.problems: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.bad_json_lines: list[int] = []

    def problem(self, reason: str, row_id: str) -> None:
        self.problems[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < _EXAMPLES_PER_REASON:
            examples.append(row_id)

    def add(self, row: Any, position: int) -> None:
        self.rows += 1
        if not isinstance(row, dict):
            self.problem("row is not an object", f"row {position}")
            return
        row_id = str(row.get("video", f"row {position}"))
        think, answer = row.get("think"), row.get("answer")
        if not isinstance(think, str) or not isinstance(answer, str):
            self.problem("missing think or answer", row_id)
            return
        # The SFT target is think + newline + answer (docs/vad-r1.md, "Release format"), so that is what is parsed.
        parsed = parse_completion(f"{think}\n{answer}")
        self.format_valid += parsed.format_valid
        self.normal_rows += parsed.is_normal
        self.abnormal_rows += not parsed.is_normal
        for reason in parsed.problems:
            self.problem(reason, row_id)
        label = row.get("anomaly_type")
        if isinstance(label, str) and (label.strip() == NORMAL_LABEL) != parsed.is_normal:
            self.problem("<which> disagrees with anomaly_type", row_id)
        self._check_span(row, parsed, row_id)

    def _check_span(self, row: dict[str, Any], parsed: ParsedCompletion, row_id: str) -> None:
        """The <when> span must be start/total, end/total at 3 decimals (how the release made it)."""
        frames = [row.get(key) for key in ("start", "end", "total_frames")]
        if parsed.span is None or any(value is None for value in frames):
            return
        start, end, total = frames
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in frames) or total <= 0:
            self.problem("bad start/end/total_frames", row_id)
            return
        self.span_checked += 1
        expected = (round(start / total, 3), round(end / total, 3))
        if any(abs(got - want) > SPAN_TOLERANCE + 1e-9 for got, want in zip(parsed.span, expected)):
            self.span_mismatch += 1
            self.problem("span mismatch", row_id)

    def result(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "format_valid": self.format_valid,
            "abnormal_rows": self.abnormal_rows,
            "normal_rows": self.normal_rows,
            "span_checked": self.span_checked,
            "span_mismatch": self.span_mismatch,
            "problems": dict(self.problems.most_common()),
            "examples": self.examples,
            "bad_json_lines": self.bad_json_lines,
        }


def validate_release_rows(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Parse the think + answer of every row and count template problems and span mismatches.

    ``abnormal_rows`` / ``normal_rows`` follow the parsed ``<which>``; a disagreement with
    the row's ``anomaly_type`` is its own problem. ``examples`` holds the first video ids
    per problem, so a reader can look the rows up.
    """
    tally = _ValidationTally()
    for position, row in enumerate(rows):
        tally.add(row, position)
    return tally.result()


def validate_release_file(path: str | Path) -> dict[str, Any]:
    """:func:`validate_release_rows` over a JSON Lines file; blank lines are skipped.

    A line that is not JSON counts as a row with the problem "bad json" (its 1-based line
    number goes to ``bad_json_lines``) instead of aborting the whole check.
    """
    tally = _ValidationTally()
    with Path(path).open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                tally.rows += 1
                tally.problem("bad json", f"line {line_number}")
                tally.bad_json_lines.append(line_number)
                continue
            tally.add(row, line_number)
    return tally.result()


def format_validation_report(result: dict[str, Any]) -> str:
    """The result of a validate_* call as a few lines of text for the CLI and notebooks."""
    rows = result["rows"]
    share = f" ({result['format_valid'] / rows:.1%})" if rows else ""
    lines = [
        f"rows: {rows}",
        f"format-valid: {result['format_valid']}{share}",
        f"labels from <which>: {result['abnormal_rows']} abnormal, {result['normal_rows']} normal",
        f"spans checked against start/end/total_frames: {result['span_checked']}, "
        f"mismatched: {result['span_mismatch']}",
    ]
    if result["problems"]:
        lines.append("problems (rows affected, first examples):")
        for reason, count in result["problems"].items():
            examples = ", ".join(result["examples"].get(reason, []))
            lines.append(f"  {count:6d}  {reason}  [{examples}]")
    else:
        lines.append("problems: none")
    return "\n".join(lines)
