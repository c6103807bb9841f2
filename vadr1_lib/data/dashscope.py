"""The paper's annotation pipeline on Alibaba's DashScope API (OpenAI-compatible endpoint):
Qwen-VL-Max captions the sampled frames, Qwen-Max writes each P2C-CoT step and the answer.

Behind the same interface as :class:`vadr1_lib.data.annotate.OfflineAnnotator`:
``annotate(facts, frames) -> Annotation``. The key comes from ``DASHSCOPE_API_KEY`` and is
written nowhere; calls are retried with back-off and cached per video, so an interrupted
run resumes without paying twice for a finished call.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vadr1_lib import paths
from vadr1_lib.data.annotate import (
    Annotation,
    ClipFacts,
    sampled_frames,
    seconds_text,
    where_words,
)
from vadr1_lib.prompts import NORMAL_LABEL, TEMPLATE_TAG_PATTERN

logger = logging.getLogger(__name__)


API_KEY_ENV = "DASHSCOPE_API_KEY"
DASHSCOPE_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
_RETRYABLE_TRANSPORT_ERRORS = (TimeoutError, ConnectionError, urllib.error.URLError, http.client.HTTPException)
_SAFE_VIDEO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
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
    cleaned = " ".join(TEMPLATE_TAG_PATTERN.sub(" ", text).split())
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
        f"lasts from {seconds_text(facts.start_frame, facts.fps)} to {seconds_text(facts.end_frame, facts.fps)} "
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
        indices = sampled_frames(facts, frames, frame_indices)
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
        times = [seconds_text(i, facts.fps) for i in indices]
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
