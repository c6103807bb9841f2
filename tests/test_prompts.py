"""The single prompt definition and the formatters that write the release's template shapes."""

from __future__ import annotations

import json
import math
import re

import pytest

from vadr1_lib import prompts
from vadr1_lib.model.tokenizer import count_tokens
from vadr1_lib.parsing import parse_completion
from vadr1_lib.prompts import (
    DIRECT_PROMPT,
    P2C_COT_PROMPT,
    PROMPT_KINDS,
    SYSTEM_PROMPT,
    build_messages,
    format_answer_abnormal,
    format_answer_normal,
    format_think,
    format_when,
    user_prompt,
)


def test_user_prompt_returns_the_one_definition_per_kind() -> None:
    assert PROMPT_KINDS == {"p2c": P2C_COT_PROMPT, "direct": DIRECT_PROMPT}
    assert user_prompt("p2c") is P2C_COT_PROMPT
    assert user_prompt("direct") is DIRECT_PROMPT


def test_user_prompt_rejects_unknown_kind_and_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=re.escape("valid kinds: ['direct', 'p2c']")):
        user_prompt("cot")


def test_p2c_prompt_names_every_tag_of_both_templates() -> None:
    for tag in ("think", "answer", "step1", "step2", "step3", "step4", *prompts.ABNORMAL_ANSWER_TAGS):
        assert f"<{tag}>" in P2C_COT_PROMPT, tag
    assert "<which>Normal" in P2C_COT_PROMPT
    assert "3 decimals" in P2C_COT_PROMPT


def test_direct_prompt_asks_for_the_answer_only() -> None:
    assert "<think>" not in DIRECT_PROMPT and "<step1>" not in DIRECT_PROMPT
    for tag in ("answer", *prompts.ABNORMAL_ANSWER_TAGS):
        assert f"<{tag}>" in DIRECT_PROMPT, tag


def test_prompts_fit_the_token_budget() -> None:
    """Every prompt token is paid in each SFT step and each of the G rollouts, and a tiny
    model has little context to spare. Measured: system 11, p2c 177, direct 95 tokens."""
    assert count_tokens(SYSTEM_PROMPT) < 20
    assert count_tokens(P2C_COT_PROMPT) < 200
    assert count_tokens(DIRECT_PROMPT) < 120


def test_build_messages_without_target_is_a_prompt() -> None:
    video = object()
    messages = build_messages("p2c", video)
    assert messages == [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": P2C_COT_PROMPT}]},
    ]
    assert messages[1]["content"][0]["video"] is video


def test_build_messages_with_target_appends_the_assistant_turn() -> None:
    messages = build_messages("direct", "clip.mp4", target="<answer>x</answer>")
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"][1]["text"] == DIRECT_PROMPT
    assert messages[2] == {"role": "assistant", "content": [{"type": "text", "text": "<answer>x</answer>"}]}


def test_build_messages_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown prompt kind"):
        build_messages("P2C")


@pytest.mark.parametrize(
    ("span", "text"),
    [
        ((0.1, 0.6456), "[0.1, 0.646]"),
        ((600 / 5294, 3420 / 5294), "[0.113, 0.646]"),
        ((0, 1), "[0.0, 1.0]"),
        ((0.0004, 0.0006), "[0.0, 0.001]"),
    ],
)
def test_format_when_writes_like_the_release(span: tuple[float, float], text: str) -> None:
    assert format_when(span) == text


@pytest.mark.parametrize(
    "span",
    [(0.7, 0.2), (0.5, 0.5), (-0.1, 0.5), (0.2, 1.5), (math.nan, 0.5), (0.1, math.inf), (0.1231, 0.1234), (0.1,)],
)
def test_format_when_refuses_spans_the_parser_would_reject(span: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        format_when(span)  # type: ignore[arg-type]


def test_format_answer_abnormal_exact_shape() -> None:
    assert format_answer_abnormal("Fighting", "two men fight", (0.25, 0.5), "centre", "violence", "injury") == (
        "<answer>The anomaly category of the video is <which>Fighting</which>. In this video, "
        "<what>two men fight</what>, and this occurs during the time range <when>[0.25, 0.5]</when>. "
        "The event takes place approximately in the <where>centre</where>. This is considered abnormal "
        "because <why>violence</why>. As a result, <how>injury</how>.</answer>"
    )


def test_format_answer_normal_exact_shape() -> None:
    assert format_answer_normal("Normal", "people walk", "nothing unusual") == (
        "<answer>The video is classified as <which>Normal</which>. In this video, <what>people walk</what>. "
        "This is considered normal because <why>nothing unusual</why>.</answer>"
    )


def test_format_think_exact_shape() -> None:
    assert format_think(["a", "b"]) == "<think><step1>a</step1>  \n<step2>b</step2></think>"
    four = format_think(["a", "b", "c", "d"])
    assert four == "<think><step1>a</step1>  \n<step2>b</step2>  \n<step3>c</step3>  \n<step4>d</step4></think>"


@pytest.mark.parametrize(
    "call",
    [
        lambda: format_answer_normal("Fighting", "x", "y"),
        lambda: format_answer_abnormal(" Normal ", "x", (0.1, 0.2), "w", "y", "z"),
        lambda: format_answer_abnormal("Fire", "", (0.1, 0.2), "w", "y", "z"),
        lambda: format_answer_abnormal("Fire", "smoke </what> rises", (0.1, 0.2), "w", "y", "z"),
        lambda: format_answer_normal("Normal", "x", "   "),
        lambda: format_think(["a", "b", "c"]),
        lambda: format_think(["a", "<step2>b"]),
    ],
)
def test_formatters_refuse_text_that_breaks_the_template(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call()


def test_formatters_refuse_wrong_types() -> None:
    with pytest.raises(TypeError):
        format_think("ab")
    with pytest.raises(TypeError):
        format_answer_normal("Normal", None, "y")  # type: ignore[arg-type]


def test_formatted_completions_parse_back_exactly() -> None:
    abnormal = format_think(["s1", "s2", "s3", "s4"]) + "\n" + format_answer_abnormal(
        "Fire", "smoke", (0.113, 0.646), "left", "danger", "damage"
    )
    parsed = parse_completion(abnormal)
    assert parsed.matches_abnormal_template and parsed.problems == ()
    fields = (parsed.which, parsed.what, parsed.where, parsed.why, parsed.how)
    assert fields == ("Fire", "smoke", "left", "danger", "damage")
    assert parsed.span == (0.113, 0.646) and parsed.steps == ("s1", "s2", "s3", "s4")

    normal = format_think(["scene", "fine"]) + "\n" + format_answer_normal("Normal", "walk", "calm")
    parsed = parse_completion(normal)
    assert parsed.matches_normal_template and (parsed.which, parsed.what, parsed.why) == ("Normal", "walk", "calm")


def test_formatters_reproduce_release_rows(release_sft_path) -> None:  # type: ignore[no-untyped-def]
    """Rebuilding each release row from its parsed fields gives the row back byte for byte
    whenever the row uses the formatters' phrasing: 937 of 1755 answers (129 abnormal in the
    "and this occurs during" phrasing + 808 normal), and 1203 thinks (the "two spaces,
    newline" separator, less 2 rows whose steps start with a space)."""
    same_answer = same_think = 0
    for line in release_sft_path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        parsed = parse_completion(row["think"] + "\n" + row["answer"])
        if parsed.is_normal:
            answer = format_answer_normal(parsed.which, parsed.what, parsed.why)
        else:
            answer = format_answer_abnormal(
                parsed.which, parsed.what, parsed.span, parsed.where, parsed.why, parsed.how
            )
        same_answer += answer == row["answer"]
        if len(parsed.steps) in (2, 4):
            same_think += format_think(parsed.steps) == row["think"]
    assert (same_answer, same_think) == (937, 1203)
