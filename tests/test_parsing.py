"""The completion parser: exact results on hand-written cases, properties on generated
text (never raises, invariants hold, near misses of the template are rejected), and the
release's SFT file as real text."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vadr1_lib.parsing import (
    ParsedCompletion,
    format_validation_report,
    parse_completion,
    validate_release_file,
    validate_release_rows,
)
from vadr1_lib.prompts import format_answer_abnormal, format_answer_normal, format_think

ABNORMAL = (
    "<think><step1>A street with parked cars.</step1>  \n\n<step2>A man breaks a window on the left.</step2>"
    "\n<step3>This is vandalism.</step3>\n<step4>Property damage; norms violated.</step4></think>\n"
    "<answer>The anomaly category of the video is <which>Vandalism</which>. In this video, "
    "<what>a man breaks a car window</what>, and this occurs during the time range "
    "<when>[0.113, 0.646]</when>. The event takes place approximately in the <where>left side</where>. "
    "This is considered abnormal because <why>it destroys property</why>. As a result, "
    "<how>the owner suffers a loss</how>.</answer>"
)
NORMAL = (
    "<think><step1>A quiet park path.</step1>  \n<step2>People stroll; nothing unusual.</step2></think>\n"
    "<answer>The video is classified as <which>Normal</which>. In this video, <what>people walk</what>. "
    "This is considered normal because <why>walking is routine</why>.</answer>"
)


def assert_invariants(parsed: ParsedCompletion) -> None:
    """What must hold for any input whatsoever."""
    assert isinstance(parsed, ParsedCompletion)
    assert not (parsed.matches_normal_template and parsed.matches_abnormal_template)
    assert parsed.format_valid == (parsed.problems == ())
    assert parsed.format_valid == (parsed.matches_normal_template or parsed.matches_abnormal_template)
    assert len(set(parsed.problems)) == len(parsed.problems)
    assert parsed.is_normal == (parsed.which == "Normal")
    assert parsed.predicted_label == ("Normal" if parsed.is_normal else "Abnormal")
    assert parsed.matches_normal_template <= parsed.is_normal
    assert (parsed.span is None) != (parsed.span_problem is None)
    if parsed.span is not None:
        start, end = parsed.span
        assert 0.0 <= start < end <= 1.0
    if parsed.format_valid:
        assert parsed.think is not None and parsed.answer is not None
        assert len(parsed.steps) == (2 if parsed.is_normal else 4)


# --- hand-written cases -------------------------------------------------------------------


def test_good_abnormal_completion() -> None:
    parsed = parse_completion(ABNORMAL)
    assert parsed.problems == ()
    assert parsed.matches_abnormal_template and not parsed.matches_normal_template
    assert parsed.steps == (
        "A street with parked cars.",
        "A man breaks a window on the left.",
        "This is vandalism.",
        "Property damage; norms violated.",
    )
    assert (parsed.which, parsed.what, parsed.when_text, parsed.where, parsed.why, parsed.how) == (
        "Vandalism",
        "a man breaks a car window",
        "[0.113, 0.646]",
        "left side",
        "it destroys property",
        "the owner suffers a loss",
    )
    assert parsed.span == (0.113, 0.646) and parsed.span_problem is None
    assert parsed.predicted_label == "Abnormal"
    assert parsed.think is not None
    assert parsed.think.startswith("<step1>A street") and parsed.think.endswith("</step4>")
    assert parsed.answer is not None and parsed.answer.startswith("The anomaly category")


def test_good_normal_completion() -> None:
    parsed = parse_completion("  \n" + NORMAL + "\n\n")
    assert parsed.problems == () and parsed.matches_normal_template
    assert parsed.steps == ("A quiet park path.", "People stroll; nothing unusual.")
    assert (parsed.which, parsed.what, parsed.why) == ("Normal", "people walk", "walking is routine")
    assert (parsed.when_text, parsed.where, parsed.how) == (None, None, None)
    assert parsed.span is None and parsed.span_problem == "missing <when>"
    assert parsed.predicted_label == "Normal"


def test_direct_kind_accepts_the_answer_alone() -> None:
    answer_only = NORMAL[NORMAL.index("<answer>") :]
    parsed = parse_completion(answer_only, kind="direct")
    assert parsed.matches_normal_template and parsed.think is None and parsed.steps == ()
    assert parse_completion(answer_only).problems == ("missing <think>",)
    assert parse_completion(NORMAL, kind="direct").problems == ("unexpected <think>",)


def test_which_must_be_exactly_normal() -> None:
    for which in ("normal", "NORMAL", "Normal.", "Abnormal", "Not Normal"):
        parsed = parse_completion(NORMAL.replace("<which>Normal</which>", f"<which>{which}</which>"))
        assert not parsed.is_normal and parsed.predicted_label == "Abnormal", which
    assert parse_completion(NORMAL.replace("<which>Normal</which>", "<which> Normal\n</which>")).is_normal


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("", ("missing <think>", "missing <answer>")),
        ("I think it is normal.", ("text outside tags", "missing <think>", "missing <answer>")),
        (NORMAL + " Done.", ("text outside tags",)),
        ("Sure! " + NORMAL, ("text outside tags",)),
        (NORMAL.replace("</answer>", ""), ("unclosed <answer>",)),
        (NORMAL.replace("</step1>", ""), ("nested tags", "unclosed <step1>", "wrong step count for normal")),
        (NORMAL.replace("<step2>", "<step3>").replace("</step2>", "</step3>"), ("steps out of order",)),
        (
            NORMAL.replace("<step1>A quiet", "<step2>A quiet").replace("path.</step1>", "path.</step2>"),
            ("steps out of order",),
        ),
        (NORMAL.replace("</step2>", "</step2><step3>x</step3><step4>y</step4>"), ("wrong step count for normal",)),
        (ABNORMAL[: ABNORMAL.index("\n<step3>")] + "</think>" + ABNORMAL[ABNORMAL.index("\n<answer>") :],
         ("wrong step count for abnormal",)),
        (NORMAL.replace("</step1>  \n", "</step1> and then "), ("text between steps",)),
        (NORMAL.replace("<step1>A quiet park path.</step1>", "<step1> </step1>"), ("empty <step1>",)),
        (ABNORMAL.replace("<when>[0.113, 0.646]</when>", "[0.113, 0.646]"), ("missing <when>",)),
        (ABNORMAL.replace("<how>", "<why>").replace("</how>", "</why>"), ("missing <how>", "repeated <why>")),
        (
            ABNORMAL.replace("<where>left side</where>", "").replace("<when>", "<where>x</where><when>"),
            ("answer tags out of order",),
        ),
        (NORMAL.replace("</what>", "</what><when>[0.1, 0.2]</when>"), ("unexpected <when> in normal answer",)),
        (NORMAL.replace("<what>people walk</what>", "<what>people <why>x</why> walk</what>"),
         ("nested tags",)),
        (NORMAL.replace("</answer>", "</answer></answer>"), ("stray </answer>",)),
        (
            NORMAL + NORMAL[NORMAL.index("<answer>") :],
            ("repeated <answer>", "repeated <which>", "repeated <what>", "repeated <why>"),
        ),
        (
            NORMAL[NORMAL.index("<answer>") :] + "\n" + NORMAL[: NORMAL.index("\n<answer>")],
            ("answer before think",),
        ),
        ("<which>Normal</which>", ("misplaced <which>", "missing <think>", "missing <answer>")),
        ("<think><answer></answer></think>", ("nested tags", "missing <answer>", "wrong step count for abnormal")),
        (NORMAL.replace("<think>", "<Think>"), ("text outside tags", "misplaced <step1>", "misplaced <step2>",
                                               "stray </think>", "missing <think>")),
    ],
)
def test_broken_completions_report_exact_problems(text: str, problems: tuple[str, ...]) -> None:
    parsed = parse_completion(text)
    assert parsed.problems == problems
    assert not parsed.format_valid
    assert_invariants(parsed)


def test_truncated_completion_still_yields_its_label_and_span() -> None:
    """A rollout cut at max length keeps what it said so far: the accuracy reward can use it."""
    truncated = ABNORMAL[: ABNORMAL.index("The event takes place")]
    parsed = parse_completion(truncated)
    assert parsed.problems == ("unclosed <answer>", "missing <where>", "missing <why>", "missing <how>")
    assert parsed.which == "Vandalism" and parsed.span == (0.113, 0.646)
    assert parsed.answer is not None and parsed.answer.endswith("</when>.")


def test_unclosed_think_stops_at_the_answer() -> None:
    parsed = parse_completion(NORMAL.replace("</think>", ""))
    assert parsed.think == "<step1>A quiet park path.</step1>  \n<step2>People stroll; nothing unusual.</step2>"
    assert parsed.steps == ("A quiet park path.", "People stroll; nothing unusual.")
    assert parsed.which == "Normal"
    assert parsed.problems == ("nested tags", "unclosed <think>", "missing <answer>")


def test_release_defect_shape_unclosed_steps() -> None:
    """Row 2088 of the release writes <step1>…<step1> instead of closing its steps."""
    broken = re.sub(r"</(step\d)>", r"<\1>", ABNORMAL)
    parsed = parse_completion(broken)
    assert parsed.steps == ()
    assert parsed.which == "Vandalism"
    assert parsed.problems == (
        "nested tags",
        "unclosed <step4>",
        "unclosed <step3>",
        "unclosed <step2>",
        "unclosed <step1>",
        "wrong step count for abnormal",
    )


@pytest.mark.parametrize(
    ("when", "span", "problem"),
    [
        ("[0.113, 0.646]", (0.113, 0.646), None),
        (" [ 0 ,1 ] ", (0.0, 1.0), None),
        ("[.5, 1.]", (0.5, 1.0), None),
        ("[0.7, 0.2]", None, "empty or reversed"),
        ("[0.5, 0.5]", None, "empty or reversed"),
        ("[0.2, 1]", (0.2, 1.0), None),  # both ends of [0, 1] are allowed
        ("[1.2, 3]", None, "out of range"),
        ("[0.2, 1.5]", None, "out of range"),  # a finite end past 1
        ("[-0.1, 0.5]", None, "out of range"),
        ("[0.1, " + "9" * 400 + "]", None, "out of range"),
        ("[a, b]", None, "unparsable <when>"),
        ("[0.1,0.2,0.3]", None, "unparsable <when>"),
        ("[nan, inf]", None, "unparsable <when>"),
        ("[1e-1, 0.5]", None, "unparsable <when>"),
        ("0.1-0.5", None, "unparsable <when>"),
        ("[０.1, 0.5]", None, "unparsable <when>"),
        ("", None, "unparsable <when>"),
    ],
)
def test_spans(when: str, span: tuple[float, float] | None, problem: str | None) -> None:
    parsed = parse_completion(ABNORMAL.replace("[0.113, 0.646]", when))
    assert (parsed.span, parsed.span_problem) == (span, problem)
    if when.strip():
        # The span's validity is reported apart from the template (see the module docstring).
        assert parsed.matches_abnormal_template
    else:
        assert parsed.problems == ("empty <when>",)


def test_caller_errors_raise() -> None:
    with pytest.raises(TypeError):
        parse_completion(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_completion(b"<answer></answer>")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid kinds"):
        parse_completion(NORMAL, kind="cot")


@pytest.mark.parametrize(
    "text",
    [
        "<think>" * 40_000 + "</answer>" * 40_000,
        "<step1>" * 80_000,
        "<which>" * 40_000 + "</which>" * 40_000,
        "<answer><when>[" + "1" * 500_000,
        "<answer><when>[" + "1" * 500_000 + "]</when></answer>",
        "<" * 300_000 + "step" * 50_000,
        "<answer><what>" + "x " * 300_000 + "</what></answer>",
    ],
)
def test_adversarial_inputs_parse_in_linear_time(text: str) -> None:
    began = time.perf_counter()
    parsed = parse_completion(text)
    assert time.perf_counter() - began < 3.0
    assert not parsed.format_valid
    assert_invariants(parsed)


# --- properties ------------------------------------------------------------------------------

TAG_TOKENS = [
    f"<{close}{name}>"
    for name in ("think", "answer", "step1", "step2", "step3", "step4", "step5",
                 "which", "what", "when", "where", "why", "how")
    for close in ("", "/")
]
FRAGMENTS = ["Normal", " Normal ", "Fire", "[0.1, 0.2]", "[0.7, 0.2]", "[a, b]", " ", "\n", "x", "<", ">",
             "<Think>", "<step10>", "é\u200b", "[1e9, nan]"]


@settings(max_examples=2000, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    parsed = parse_completion(text)
    assert_invariants(parsed)
    assert parse_completion(text, kind="direct").which == parsed.which


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(TAG_TOKENS + FRAGMENTS) | st.text(max_size=5), max_size=40).map("".join))
def test_tag_soup_never_raises(text: str) -> None:
    for kind in ("p2c", "direct"):
        assert_invariants(parse_completion(text, kind=kind))


# Field text as a model might write it: anything but a '<' (which could open a tag), not blank.
field_text = st.text(
    st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), min_size=1, max_size=20
).map(lambda s: s if s.strip() else s + "x")


@st.composite
def valid_completions(draw: st.DrawFn) -> tuple[str, bool, tuple[float, float] | None]:
    """A completion in one of the two templates, with the release's separators.

    All texts come from one list draw: hypothesis pays per draw, and this keeps the
    strategies that build on it at a few seconds for 2000 examples.
    """
    texts = draw(st.lists(field_text, min_size=7, max_size=7))
    if draw(st.booleans()):
        think, answer, span = format_think(texts[:2]), format_answer_normal("Normal", texts[2], texts[3]), None
    else:
        start, end = sorted(draw(st.lists(st.integers(0, 1000), min_size=2, max_size=2, unique=True)))
        span = (start / 1000, end / 1000)
        which = texts[4] if texts[4].strip() != "Normal" else "Not " + texts[4]
        think = format_think(texts[:4])
        answer = format_answer_abnormal(which, texts[5], span, texts[6], texts[0], texts[1])
    lead, separator = draw(st.sampled_from([("", "\n"), (" ", ""), ("\n", "  \n\n"), ("", " ")]))
    return f"{lead}{think}{separator}{answer}", span is None, span


@settings(max_examples=2000, deadline=None)
@given(valid_completions())
def test_valid_templates_are_accepted(case: tuple[str, bool, tuple[float, float] | None]) -> None:
    text, is_normal, span = case
    parsed = parse_completion(text)
    assert parsed.problems == ()
    assert parsed.is_normal == is_normal
    assert parsed.matches_normal_template == is_normal and parsed.matches_abnormal_template != is_normal
    assert parsed.span == (None if span is None else (round(span[0], 3), round(span[1], 3)))
    assert_invariants(parsed)


def _tag_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"</?(?:think|answer|step\d|which|what|when|where|why|how)>", text)]


@st.composite
def near_misses(draw: st.DrawFn) -> tuple[str, str]:
    """A valid completion with one mutation. All but "insert" change its sequence of tags,
    so it can no longer match either template (the only two valid tag sequences); "insert"
    puts arbitrary text anywhere, which may or may not keep it valid."""
    text, _, _ = draw(valid_completions())
    tags = _tag_spans(text)
    mutation = draw(st.sampled_from(["drop", "unclose", "swap", "nest", "duplicate", "truncate", "insert"]))
    if mutation == "drop":
        start, end = draw(st.sampled_from(tags))
        return text[:start] + text[end:], mutation
    if mutation == "unclose":
        start, end = draw(st.sampled_from([s for s in tags if text[s[0] + 1] == "/"]))
        return text[:start] + text[end:], mutation
    if mutation == "swap":
        pair = draw(st.lists(st.sampled_from(tags), min_size=2, max_size=2, unique=True))
        (a_start, a_end), (b_start, b_end) = sorted(pair)
        a, b = text[a_start:a_end], text[b_start:b_end]  # distinct: every tag occurs once
        return text[:a_start] + b + text[a_end:b_start] + a + text[b_end:], mutation
    if mutation == "nest":
        inner = draw(
            st.sampled_from(["<why>x</why>", "<step1>x</step1>", "<think>x</think>", "<when>[0.1, 0.2]</when>"])
        )
        _, end = draw(st.sampled_from([s for s in tags if text[s[0] + 1] != "/"]))
        return text[:end] + inner + text[end:], mutation
    if mutation == "duplicate":
        start, _ = draw(st.sampled_from([s for s in tags if text[s[0] + 1] != "/"]))
        name = text[start + 1 : text.index(">", start)]
        close = text.index(f"</{name}>", start) + len(name) + 3
        return text[:close] + text[start:close] + text[close:], mutation
    if mutation == "insert":
        position = draw(st.integers(0, len(text)))
        return text[:position] + draw(st.text(min_size=1, max_size=8)) + text[position:], mutation
    cut = draw(st.integers(0, tags[-1][0]))
    return text[:cut], mutation


@settings(max_examples=2000, deadline=None)
@given(near_misses())
def test_near_misses_are_rejected(case: tuple[str, str]) -> None:
    text, mutation = case
    parsed = parse_completion(text)
    assert_invariants(parsed)
    if mutation != "insert":
        assert not parsed.format_valid, mutation


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-(10**30), 10**30).map(str),
        st.text(max_size=12),
    ),
    st.one_of(st.floats().map(repr), st.text(max_size=12)),
)
def test_arbitrary_span_numbers(first: str, second: str) -> None:
    parsed = parse_completion(ABNORMAL.replace("[0.113, 0.646]", f"[{first}, {second}]"))
    assert_invariants(parsed)
    if parsed.span is not None:
        assert math.isclose(parsed.span[0], float(first)) and math.isclose(parsed.span[1], float(second))


# --- real text and the validation report --------------------------------------------------------


def test_release_sft_file_validation(release_sft_path: Path) -> None:
    """Fixed data, fixed counts: one row (video 2088, ECVA, line 583) leaves its steps unclosed
    (it writes <step1>…<step1>); every other row matches its template and its <when> equals
    start/total, end/total at 3 decimals."""
    result = validate_release_file(release_sft_path)
    assert result == {
        "rows": 1755,
        "format_valid": 1754,
        "abnormal_rows": 814,
        "normal_rows": 941,
        "span_checked": 814,
        "span_mismatch": 0,
        "problems": {
            "nested tags": 1,
            "unclosed <step4>": 1,
            "unclosed <step3>": 1,
            "unclosed <step2>": 1,
            "unclosed <step1>": 1,
            "wrong step count for abnormal": 1,
        },
        "examples": {
            "nested tags": ["2088"],
            "unclosed <step4>": ["2088"],
            "unclosed <step3>": ["2088"],
            "unclosed <step2>": ["2088"],
            "unclosed <step1>": ["2088"],
            "wrong step count for abnormal": ["2088"],
        },
        "bad_json_lines": [],
    }


def _row(video: str, think: str, answer: str, **extra: object) -> dict[str, object]:
    return {"video": video, "think": think, "answer": answer, **extra}


def test_validate_rows_counts_each_kind_of_defect() -> None:
    abnormal_think = format_think(["a", "b", "c", "d"])
    abnormal_answer = format_answer_abnormal("Fire", "smoke", (0.1, 0.5), "left", "danger", "harm")
    normal_think, normal_answer = format_think(["a", "b"]), format_answer_normal("Normal", "walk", "calm")
    rows = [
        _row("ok", abnormal_think, abnormal_answer, anomaly_type="Fire", start=10, end=50, total_frames=100),
        _row("off", abnormal_think, abnormal_answer, anomaly_type="Fire", start=10, end=60, total_frames=100),
        _row("calm", normal_think, normal_answer, anomaly_type="Normal"),
        _row("flip", normal_think, normal_answer, anomaly_type="Fire"),
        _row("zero", abnormal_think, abnormal_answer, start=1, end=5, total_frames=0),
        _row("short", normal_think, abnormal_answer),
        {"video": "no-answer", "think": normal_think},
        ["not", "a", "row"],
    ]
    result = validate_release_rows(rows)  # type: ignore[arg-type]
    assert result == {
        "rows": 8,
        "format_valid": 5,
        "abnormal_rows": 4,
        "normal_rows": 2,
        "span_checked": 2,
        "span_mismatch": 1,
        "problems": {
            "span mismatch": 1,
            "<which> disagrees with anomaly_type": 1,
            "bad start/end/total_frames": 1,
            "wrong step count for abnormal": 1,
            "missing think or answer": 1,
            "row is not an object": 1,
        },
        "examples": {
            "span mismatch": ["off"],
            "<which> disagrees with anomaly_type": ["flip"],
            "bad start/end/total_frames": ["zero"],
            "wrong step count for abnormal": ["short"],
            "missing think or answer": ["no-answer"],
            "row is not an object": ["row 7"],
        },
        "bad_json_lines": [],
    }


def test_validate_file_counts_bad_json_lines(tmp_path: Path) -> None:
    good = json.dumps(_row("v1", format_think(["a", "b"]), format_answer_normal("Normal", "walk", "calm")))
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{good}\n\n{{not json\n{good}\n[1, 2\n", encoding="utf-8")
    result = validate_release_file(path)
    assert (result["rows"], result["format_valid"], result["normal_rows"]) == (4, 2, 2)
    assert result["problems"] == {"bad json": 2}
    assert result["examples"] == {"bad json": ["line 3", "line 5"]}
    assert result["bad_json_lines"] == [3, 5]


def test_validation_report_text() -> None:
    result = {
        "rows": 4,
        "format_valid": 3,
        "abnormal_rows": 1,
        "normal_rows": 3,
        "span_checked": 1,
        "span_mismatch": 0,
        "problems": {"unclosed <answer>": 1},
        "examples": {"unclosed <answer>": ["v7"]},
        "bad_json_lines": [],
    }
    assert format_validation_report(result) == (
        "rows: 4\n"
        "format-valid: 3 (75.0%)\n"
        "labels from <which>: 1 abnormal, 3 normal\n"
        "spans checked against start/end/total_frames: 1, mismatched: 0\n"
        "problems (rows affected, first examples):\n"
        "       1  unclosed <answer>  [v7]"
    )
    empty = format_validation_report({**result, "rows": 0, "format_valid": 0, "problems": {}, "examples": {}})
    assert empty.splitlines()[:2] == ["rows: 0", "format-valid: 0"] and empty.endswith("problems: none")
