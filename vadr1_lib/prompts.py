"""The prompts and the P2C-CoT output template, defined once.

The Vad-R1 release phrased the instruction three different ways: one prompt in its SFT
data, another in its RL script and a third in its inference script. A model fine-tuned
on one wording and then sampled (RL) or evaluated with another sees a train/test
mismatch in the one input it is meant to follow, and a small model is especially
sensitive to that. This project therefore keeps a single definition here: the SFT data
builder, the RL prompts, inference and the notebooks all import it, so changing the
wording changes it everywhere at once.

Two prompt kinds exist:

- ``"p2c"``: reason inside ``<think>`` with the Perception-to-Cognition steps, then answer.
- ``"direct"``: answer only, with the same answer tags; a baseline without reasoning.

The prompts are kept short on purpose (Qwen2.5 tokens: system 11, p2c 177, direct 95):
every prompt token is paid for in each training step and each of the G rollouts, and a
tiny model has little context to spare. Each tag is named once, not as an open/close
pair, because the SFT targets teach the full shape.

The ``format_*`` helpers write the exact shapes of the release's annotations (the most
frequent phrasing in ``Vad-Reasoning-SFT-train.jsonl``), so that generated data and the
real release look the same to the tokenizer, the parser and the metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

NORMAL_LABEL = "Normal"
ABNORMAL_LABEL = "Abnormal"

# Answer tags in the order the template requires them.
ABNORMAL_ANSWER_TAGS: tuple[str, ...] = ("which", "what", "when", "where", "why", "how")
NORMAL_ANSWER_TAGS: tuple[str, ...] = ("which", "what", "why")
# Number of <stepN> blocks inside <think> for each kind of answer.
ABNORMAL_STEP_COUNT = 4
NORMAL_STEP_COUNT = 2

SYSTEM_PROMPT = "You are a helpful assistant who analyses videos for anomalies."

_TASK = "Watch the video and decide whether it shows an anomaly."

_ANSWER_SPEC = (
    "If abnormal, give <which> category, <what> event, <when>[start, end] as fractions "
    "of the video with 3 decimals, <where> place in the frame, <why> reason, "
    "<how> harm or violated norm. "
    "If normal, give <which>Normal, <what> scene, <why> reason. Close every tag."
)

P2C_COT_PROMPT = (
    f"{_TASK}\n"
    "First reason inside <think>. If abnormal, write four steps: <step1> the scene and "
    "what is normal there, <step2> the suspicious event and where it happens, <step3> why "
    "it is abnormal and its category, <step4> causes, violated norms and consequences. "
    "If normal, write two steps: <step1> the scene and objects, <step2> why it is normal.\n"
    f"Then answer inside <answer>. {_ANSWER_SPEC}"
)

DIRECT_PROMPT = f"{_TASK}\nReply only inside <answer>, without reasoning. {_ANSWER_SPEC}"

PROMPT_KINDS: dict[str, str] = {"p2c": P2C_COT_PROMPT, "direct": DIRECT_PROMPT}


def user_prompt(kind: str) -> str:
    """The user instruction for a prompt kind; a typo fails loudly instead of silently."""
    try:
        return PROMPT_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown prompt kind {kind!r}; valid kinds: {sorted(PROMPT_KINDS)}") from None


def build_messages(kind: str, video: Any = None, *, target: str | None = None) -> list[dict[str, Any]]:
    """Chat messages in the transformers multimodal format.

    ``video`` is passed through untouched (a path, a frame array, whatever the processor
    takes), so the same messages serve training, rollouts and inference. With ``target``
    an assistant turn is appended: that is an SFT example.
    """
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {
            "role": "user",
            "content": [{"type": "video", "video": video}, {"type": "text", "text": user_prompt(kind)}],
        },
    ]
    if target is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return messages


# Every tag of the output template, defined once: the parser, the annotators and the
# field checks below read these.
BLOCK_TAGS: tuple[str, ...] = ("think", "answer")
STEP_TAGS: tuple[str, ...] = tuple(f"step{n}" for n in range(1, 10))
TEMPLATE_TAGS: tuple[str, ...] = (*BLOCK_TAGS, *STEP_TAGS, *ABNORMAL_ANSWER_TAGS)
TEMPLATE_TAG_PATTERN = re.compile(rf"<(/?)({'|'.join(TEMPLATE_TAGS)})>")  # group 1: "/" for a closing tag


def _checked_text(name: str, value: str) -> str:
    """Reject field text that would break the template (empty, or holding a template tag)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} is empty")
    for tag in TEMPLATE_TAGS:
        if f"<{tag}>" in value or f"</{tag}>" in value:
            raise ValueError(f"{name} contains the template tag <{tag}>: {value!r}")
    return value


def format_when(span: tuple[float, float]) -> str:
    """``[s, e]`` as the release writes it: each end rounded to 3 decimals, shortest repr.

    The release wrote ``str(round(x, 3))``, so ``0.1`` stays ``0.1`` (not ``0.100``); all
    814 abnormal SFT rows reproduce their ``<when>`` exactly this way from start, end and
    total_frames.
    A span that is empty once rounded would be rejected by the parser, so it is refused here.
    """
    start, end = (float(x) for x in span)
    if not (math.isfinite(start) and math.isfinite(end) and 0.0 <= start < end <= 1.0):
        raise ValueError(f"span must satisfy 0 <= start < end <= 1, got {span!r}")
    start_r, end_r = round(start, 3), round(end, 3)
    if start_r >= end_r:
        raise ValueError(f"span {span!r} is empty at 3 decimals")
    return f"[{start_r}, {end_r}]"


def format_answer_abnormal(
    which: str, what: str, when: tuple[float, float], where: str, why: str, how: str
) -> str:
    """An abnormal answer in the release's most frequent phrasing (six tags, in order)."""
    if _checked_text("which", which).strip() == NORMAL_LABEL:
        raise ValueError(f"an abnormal answer cannot have <which>{NORMAL_LABEL}</which>")
    return (
        f"<answer>The anomaly category of the video is <which>{which}</which>. "
        f"In this video, <what>{_checked_text('what', what)}</what>, "
        f"and this occurs during the time range <when>{format_when(when)}</when>. "
        f"The event takes place approximately in the <where>{_checked_text('where', where)}</where>. "
        f"This is considered abnormal because <why>{_checked_text('why', why)}</why>. "
        f"As a result, <how>{_checked_text('how', how)}</how>.</answer>"
    )


def format_answer_normal(which: str, what: str, why: str) -> str:
    """A normal answer in the release's phrasing (808 of its 941 normal rows use it verbatim)."""
    if _checked_text("which", which).strip() != NORMAL_LABEL:
        raise ValueError(f"a normal answer needs <which>{NORMAL_LABEL}</which>, got {which!r}")
    return (
        f"<answer>The video is classified as <which>{which}</which>. "
        f"In this video, <what>{_checked_text('what', what)}</what>. "
        f"This is considered normal because <why>{_checked_text('why', why)}</why>.</answer>"
    )


def format_think(steps: Sequence[str]) -> str:
    """``<think>`` with numbered steps, separated as in most release rows (two spaces, newline).

    Two steps is the normal form, four the abnormal one; any other count is refused
    because no template accepts it.
    """
    if isinstance(steps, str):
        raise TypeError("steps must be a sequence of strings, not one string")
    if len(steps) not in (NORMAL_STEP_COUNT, ABNORMAL_STEP_COUNT):
        raise ValueError(
            f"need {NORMAL_STEP_COUNT} (normal) or {ABNORMAL_STEP_COUNT} (abnormal) steps, got {len(steps)}"
        )
    body = "  \n".join(
        f"<step{n}>{_checked_text(f'step{n}', step)}</step{n}>" for n, step in enumerate(steps, start=1)
    )
    return f"<think>{body}</think>"
