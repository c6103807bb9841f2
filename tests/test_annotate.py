"""The annotation pipeline: ground-truth fields, the offline backend's text, and the
DashScope backend end to end against a local fake of the OpenAI-compatible endpoint."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from vadr1_lib import cli, stages
from vadr1_lib.data import taxonomy
from vadr1_lib.data.annotate import (
    Annotation,
    ClipFacts,
    OfflineAnnotator,
    where_words,
)
from vadr1_lib.data.dashscope import (
    API_KEY_ENV,
    DashScopeAnnotator,
    DashScopeError,
    MissingAPIKeyError,
)
from vadr1_lib.data.phrases import PHRASES, phrases_for
from vadr1_lib.parsing import parse_completion

SCENE = "a paved campus path seen by a fixed CCTV camera, where pedestrians walk"
DRAWN_CATEGORIES = (
    "Fire",
    "Explosion",
    "Falling Objects",
    "Obstacles on Road",
    "Flooding or Tsunami",
    "Electrical Failures",
    "Air Pollution",
    "Wrong-Way Driving",
    "Illegal Parking",
    "Animals in Urban Areas",
)
LOWER_LEFT_BOX = (10, 150, 90, 230)  # in a 320x240 frame


def abnormal_facts(
    category: str = "Fire", video_id: str = "clip1", start: int = 40, end: int = 70, total: int = 100
) -> ClipFacts:
    return ClipFacts(
        video_id=video_id,
        total_frames=total,
        fps=10.0,
        width=320,
        height=240,
        scene=SCENE,
        category=category,
        start_frame=start,
        end_frame=end,
        boxes={frame: LOWER_LEFT_BOX for frame in range(start, end)},
    )


def normal_facts(video_id: str = "calm1") -> ClipFacts:
    return ClipFacts(video_id=video_id, total_frames=100, fps=10.0, width=320, height=240, scene=SCENE, category="Normal")


def frames(count: int = 4, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------
# Ground truth: where, when, facts validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "words"),
    [
        ((10, 150, 90, 230), "lower-left area of the frame"),
        ((140, 100, 180, 140), "center of the frame"),
        ((250, 10, 310, 60), "upper-right area of the frame"),
        ((130, 10, 190, 60), "upper-center area of the frame"),
        ((0, 100, 60, 140), "middle-left area of the frame"),
        ((0, 0, 320, 120), "whole frame"),  # exactly half the frame
        ((0, 0, 320, 119), "upper-center area of the frame"),  # just under half
    ],
)
def test_where_words_names_the_grid_cell_of_the_box_centre(box: tuple[int, int, int, int], words: str) -> None:
    assert where_words(box, 320, 240) == words


@pytest.mark.parametrize("box", [(10, 10, 10, 20), (-1, 0, 10, 10), (0, 0, 321, 10), (0, 0, 10)])
def test_where_words_rejects_empty_or_outside_boxes(box: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="box"):
        where_words(box, 320, 240)


def test_span_is_frames_over_total_at_three_decimals_as_in_the_release() -> None:
    # The release's Fire row: start 0, end 510 of 1032 frames -> [0.0, 0.494].
    facts = abnormal_facts(start=0, end=510, total=1032)
    assert facts.span == (0.0, 0.494)
    assert abnormal_facts(start=12, end=100, total=101).span == (0.119, 0.99)
    assert normal_facts().span is None


def test_typical_box_is_the_median_over_the_span() -> None:
    boxes = {5: (0, 0, 10, 10), 10: (100, 100, 120, 120), 11: (102, 100, 122, 120), 12: (104, 100, 124, 120)}
    facts = ClipFacts("v", 100, 10.0, 320, 240, SCENE, "Fire", 10, 20, boxes)
    assert facts.typical_box() == (102, 100, 122, 120)  # frame 5 is outside the span


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"category": "fire"}, "canonical"),
        ({"category": "Abnormal"}, "canonical"),
        ({"start_frame": 70, "end_frame": 40}, "start_frame < end_frame"),
        ({"end_frame": 101}, "start_frame < end_frame"),
        ({"boxes": {}}, "boxes"),
        ({"boxes": {100: LOWER_LEFT_BOX}}, "outside"),
        ({"boxes": {45: (0, 0, 400, 10)}}, "outside the 320x240 frame"),
        ({"total_frames": 0}, "total_frames"),
        ({"fps": 0.0}, "fps"),
        ({"scene": " "}, "scene"),
    ],
)
def test_inconsistent_facts_are_refused(changes: dict[str, Any], message: str) -> None:
    fields = {**abnormal_facts().__dict__, **changes}
    with pytest.raises(ValueError, match=message):
        ClipFacts(**fields)


def test_a_span_that_vanishes_at_three_decimals_is_refused() -> None:
    with pytest.raises(ValueError, match="empty at 3 decimals"):
        ClipFacts("v", 100_000, 30.0, 320, 240, SCENE, "Fire", 10, 20, {10: LOWER_LEFT_BOX})


def test_normal_facts_carry_no_span_or_boxes() -> None:
    with pytest.raises(ValueError, match="normal clip"):
        ClipFacts("v", 100, 10.0, 320, 240, SCENE, "Normal", 10, 20)
    with pytest.raises(ValueError, match="normal clip"):
        ClipFacts("v", 100, 10.0, 320, 240, SCENE, "Normal", boxes={1: LOWER_LEFT_BOX})



def test_annotation_refuses_fields_of_the_other_kind() -> None:
    with pytest.raises(ValueError, match="normal annotation"):
        Annotation("v", (), ("a", "b"), "Normal", "x", "y", where="center of the frame")
    with pytest.raises(ValueError, match="needs when, where and how"):
        Annotation("v", (), ("a", "b", "c", "d"), "Fire", "x", "y", when=(0.1, 0.2))
    with pytest.raises(ValueError, match="template tag"):
        Annotation("v", (), ("a", "<step2>b"), "Normal", "x", "y")


# ---------------------------------------------------------------------------------------
# Offline backend
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_offline_abnormal_text_is_format_valid_with_the_exact_ground_truth(seed: int) -> None:
    annotator = OfflineAnnotator(seed)
    for number, category in enumerate(taxonomy.CATEGORIES):
        start, end, total = 7 * number, 7 * number + 11 + seed, 300 + number
        facts = abnormal_facts(category, f"clip{number}", start, end, total)
        annotation = annotator.annotate(facts, frames(8))
        parsed = parse_completion(annotation.think + "\n" + annotation.answer)
        assert parsed.matches_abnormal_template, (category, parsed.problems)
        assert parsed.which == category
        assert parsed.span == (round(start / total, 3), round(end / total, 3))
        assert parsed.where == "lower-left area of the frame"
        assert len(parsed.steps) == 4
        assert category not in parsed.steps[0] and category in parsed.steps[2]
        assert f"{start / 10:.1f} s" in parsed.steps[1]  # local perception says when


@pytest.mark.parametrize("seed", range(6))
def test_offline_normal_text_is_format_valid(seed: int) -> None:
    annotation = OfflineAnnotator(seed).annotate(normal_facts(f"calm{seed}"), frames(8))
    parsed = parse_completion(annotation.target)
    assert parsed.matches_normal_template, parsed.problems
    assert parsed.which == "Normal" and len(parsed.steps) == 2
    assert SCENE in parsed.steps[0]
    assert (annotation.when, annotation.where, annotation.how) == (None, None, None)


def test_offline_is_deterministic_per_seed_and_clip_and_varies_across_seeds() -> None:
    facts = abnormal_facts("Illegal Parking")
    first = OfflineAnnotator(3).annotate(facts, frames())
    # Annotating other clips first must not change this clip's text.
    other = OfflineAnnotator(3)
    other.annotate(abnormal_facts("Fire", "other"), frames())
    assert other.annotate(facts, frames()) == first
    targets = {OfflineAnnotator(seed).annotate(facts, frames()).target for seed in range(8)}
    assert len(targets) >= 4


def test_offline_captions_follow_the_sampled_frames() -> None:
    facts = abnormal_facts("Fire", start=40, end=60)
    annotation = OfflineAnnotator(0).annotate(facts, frames(3), frame_indices=[0, 50, 99])
    assert len(annotation.captions) == 3
    assert annotation.captions[0] == f"0.0 s: A{SCENE[1:]}; nothing unusual is visible."
    assert annotation.captions[1].startswith(f"5.0 s: A{SCENE[1:]}; {annotation.what} in the lower-left area")
    assert annotation.captions[2].startswith("9.9 s:") and annotation.captions[2].endswith("nothing unusual is visible.")
    # Default sampling is uniform over the whole video.
    assert [c.split(":")[0] for c in OfflineAnnotator(0).annotate(facts, frames(3)).captions] == ["0.0 s", "5.0 s", "9.9 s"]


def test_offline_rejects_bad_frames_and_indices() -> None:
    with pytest.raises(ValueError, match="uint8"):
        OfflineAnnotator(0).annotate(abnormal_facts(), frames().astype(np.float32))
    with pytest.raises(ValueError, match="3 frame indices for 4 frames"):
        OfflineAnnotator(0).annotate(abnormal_facts(), frames(4), frame_indices=[0, 1, 2])
    with pytest.raises(ValueError, match="ascending"):
        OfflineAnnotator(0).annotate(abnormal_facts(), frames(2), frame_indices=[5, 100])


def test_drawn_categories_have_their_own_phrases_and_others_a_named_fallback() -> None:
    assert set(DRAWN_CATEGORIES) <= set(PHRASES)
    for bank in PHRASES.values():
        for variants in (bank.events, bank.whys, bank.causes, bank.norms, bank.hows):
            assert 2 <= len(variants) <= 4 and len(set(variants)) == len(variants)
            assert all(v[0].islower() and not v.endswith(".") for v in variants)
    fallback = phrases_for("Red Light Violation")
    assert all("red light violation" in event for event in fallback.events)
    with pytest.raises(ValueError, match="not an anomaly category"):
        phrases_for("Normal")


def test_offline_targets_stay_short_in_qwen_tokens() -> None:
    """The targets are for a tiny model: the release's template alone costs 127 tokens
    (abnormal) and 59 (normal); the generated text must not bloat much beyond that."""
    from vadr1_lib.model.tokenizer import count_tokens

    annotator = OfflineAnnotator(0)
    abnormal = [
        count_tokens(annotator.annotate(abnormal_facts(c, f"a{i}{c}"), frames()).target)
        for i in range(3)
        for c in DRAWN_CATEGORIES
    ]
    normal = [count_tokens(annotator.annotate(normal_facts(f"n{i}"), frames()).target) for i in range(10)]
    assert 200 <= statistics.mean(abnormal) and max(abnormal) <= 300
    assert 80 <= statistics.mean(normal) and max(normal) <= 120


def test_to_row_holds_the_release_strings() -> None:
    annotation = OfflineAnnotator(0).annotate(abnormal_facts(), frames())
    assert annotation.to_row() == {"think": annotation.think, "answer": annotation.answer}
    assert annotation.target == annotation.think + "\n" + annotation.answer


# ---------------------------------------------------------------------------------------
# DashScope backend against a local fake server
# ---------------------------------------------------------------------------------------

API_KEY = "sk-test-0123456789"
API_PATH = "/compatible-mode/v1/chat/completions"


class FakeChatServer:
    """An OpenAI-compatible chat-completions endpoint on 127.0.0.1 that records requests.

    ``plan`` scripts the next requests, one entry each: an int answers with that HTTP
    error status, a float sleeps that many seconds before answering normally, None answers
    normally. Normal replies depend only on the request (so reruns get the same text).
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.plan: list[int | float | None] = []
        self.caption_reply: str | None = None
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/compatible-mode/v1"

    def reply(self, body: dict[str, Any]) -> str:
        if body["model"] == "qwen-vl-max":
            images = [p for p in body["messages"][-1]["content"] if p["type"] == "image_url"]
            return self.caption_reply or "\n".join(f"{n}: Frame {n} shows a path." for n in range(1, len(images) + 1))
        prompt = body["messages"][-1]["content"]
        if "JSON object" in prompt:
            fields = {"what": "A man sets a bin on fire.", "why": "Fire endangers people."}
            if '"how"' in prompt:
                fields["how"] = "People could be burned."
            return json.dumps(fields)
        return f"Sentence {hashlib.sha256(prompt.encode()).hexdigest()[:8]}."

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    action = server.plan.pop(0) if server.plan else None
                if isinstance(action, float):
                    time.sleep(action)
                if isinstance(action, int):
                    status, payload = action, {"error": {"message": f"fake failure {action}", "type": "test"}}
                else:
                    content = server.reply(body)
                    status, payload = 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def server() -> Iterator[FakeChatServer]:
    fake = FakeChatServer()
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture(autouse=True)
def api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def make_annotator(server: FakeChatServer, cache_dir: Any, **options: Any) -> DashScopeAnnotator:
    settings = {"backoff_s": 0.0, "timeout_s": 2.0, **options}
    return DashScopeAnnotator(base_url=server.base_url, cache_dir=cache_dir, **settings)


def test_round_trip_sends_key_models_and_jpeg_frames(server: FakeChatServer, tmp_path: Any) -> None:
    facts = abnormal_facts("Fire")
    annotator = make_annotator(server, tmp_path)
    annotation = annotator.annotate(facts, frames(4))

    assert len(server.requests) == 6  # captions, 4 steps, answer
    assert all(r["path"] == API_PATH for r in server.requests)
    assert all(r["headers"]["Authorization"] == f"Bearer {API_KEY}" for r in server.requests)
    assert [r["body"]["model"] for r in server.requests] == ["qwen-vl-max"] + ["qwen-max"] * 5
    parts = server.requests[0]["body"]["messages"][-1]["content"]
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(images) == 4
    for url in images:
        assert url.startswith("data:image/jpeg;base64,")
        decoded = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == (16, 16, 3)
    step3_prompt = server.requests[3]["body"]["messages"][-1]["content"]
    assert "3.3 s: Frame 2 shows a path." in step3_prompt  # captions carry their times
    assert "category Fire" in step3_prompt and "Step 2: Sentence" in step3_prompt

    assert annotation.captions == tuple(f"{t}: Frame {n} shows a path." for n, t in enumerate(["0.0 s", "3.3 s", "6.6 s", "9.9 s"], 1))
    assert annotation.which == "Fire" and annotation.when == (0.4, 0.7)
    assert annotation.where == "lower-left area of the frame"
    assert (annotation.what, annotation.why, annotation.how) == ("a man sets a bin on fire", "fire endangers people", "people could be burned")
    assert all(step.startswith("Sentence ") for step in annotation.steps)
    assert parse_completion(annotation.target).matches_abnormal_template
    assert API_KEY not in repr(annotator)

    # A second run is served from the cache: no request, same annotation.
    assert annotator.annotate(facts, frames(4)) == annotation
    assert len(server.requests) == 6


def test_normal_round_trip_asks_two_steps(server: FakeChatServer, tmp_path: Any) -> None:
    annotation = make_annotator(server, tmp_path).annotate(normal_facts(), frames(3))
    assert len(server.requests) == 4
    assert annotation.how is None and annotation.which == "Normal"
    assert parse_completion(annotation.target).matches_normal_template


def test_server_errors_and_rate_limits_are_retried(server: FakeChatServer, tmp_path: Any) -> None:
    server.plan = [500, 429, 503]
    annotation = make_annotator(server, tmp_path).annotate(abnormal_facts(), frames())
    assert len(server.requests) == 9
    assert annotation.which == "Fire"


def test_client_errors_fail_at_once_with_status_and_message(server: FakeChatServer, tmp_path: Any) -> None:
    server.plan = [400]
    with pytest.raises(DashScopeError, match="qwen-vl-max: HTTP 400: fake failure 400") as caught:
        make_annotator(server, tmp_path).annotate(abnormal_facts(), frames())
    assert caught.value.status == 400
    assert API_KEY not in str(caught.value)
    assert len(server.requests) == 1


def test_retries_are_bounded(server: FakeChatServer, tmp_path: Any) -> None:
    server.plan = [503, 503, 503]
    with pytest.raises(DashScopeError, match="gave up after 3 attempts; last error: HTTP 503: fake failure 503"):
        make_annotator(server, tmp_path, max_retries=2).annotate(abnormal_facts(), frames())
    assert len(server.requests) == 3


def test_a_slow_reply_times_out_and_is_retried(server: FakeChatServer, tmp_path: Any) -> None:
    server.plan = [0.6]
    annotation = make_annotator(server, tmp_path, timeout_s=0.2).annotate(normal_facts(), frames())
    assert len(server.requests) == 5
    assert annotation.which == "Normal"


def test_timeouts_that_persist_end_in_a_clear_error(server: FakeChatServer, tmp_path: Any) -> None:
    server.plan = [0.6, 0.6]
    with pytest.raises(DashScopeError, match=r"gave up after 2 attempts.*timed out"):
        make_annotator(server, tmp_path, timeout_s=0.2, max_retries=1).annotate(normal_facts(), frames())


def test_an_interrupted_run_resumes_without_repeating_finished_calls(server: FakeChatServer, tmp_path: Any) -> None:
    facts = abnormal_facts("Explosion")
    uninterrupted = make_annotator(server, tmp_path / "fresh").annotate(facts, frames())
    server.requests.clear()

    server.plan = [None, None, 400]  # captions and step 1 finish, step 2 fails
    with pytest.raises(DashScopeError, match="HTTP 400"):
        make_annotator(server, tmp_path / "resumed").annotate(facts, frames())
    cache_file = tmp_path / "resumed" / "clip1.json"
    assert sorted(json.loads(cache_file.read_text())["calls"]) == ["captions", "step1"]
    server.requests.clear()

    resumed = make_annotator(server, tmp_path / "resumed").annotate(facts, frames())
    assert len(server.requests) == 4  # steps 2-4 and the answer
    assert resumed == uninterrupted
    assert sorted(json.loads(cache_file.read_text())["calls"]) == ["answer", "captions", "step1", "step2", "step3", "step4"]
    assert [p.name for p in (tmp_path / "resumed").iterdir()] == ["clip1.json"]  # no temporary file left


def test_changed_facts_reuse_only_the_calls_they_do_not_change(server: FakeChatServer, tmp_path: Any) -> None:
    annotator = make_annotator(server, tmp_path)
    annotator.annotate(abnormal_facts("Fire"), frames())
    server.requests.clear()
    annotation = annotator.annotate(abnormal_facts("Explosion"), frames())
    assert [r["body"]["model"] for r in server.requests] == ["qwen-max"] * 5  # captions reused
    assert annotation.which == "Explosion"


def test_an_unusable_caption_reply_is_an_error_and_not_cached(server: FakeChatServer, tmp_path: Any) -> None:
    server.caption_reply = "I cannot see any frames."
    with pytest.raises(DashScopeError, match="does not hold 4 captions"):
        make_annotator(server, tmp_path).annotate(abnormal_facts(), frames(4))
    assert not (tmp_path / "clip1.json").exists()


def test_missing_key_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv(API_KEY_ENV)
    with pytest.raises(MissingAPIKeyError, match=API_KEY_ENV):
        DashScopeAnnotator(cache_dir=tmp_path)
    monkeypatch.setenv(API_KEY_ENV, "  ")
    with pytest.raises(MissingAPIKeyError, match=API_KEY_ENV):
        DashScopeAnnotator(cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------
# The command: a split's clips annotated into a file, resumably


def _rows(path: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_data_annotate_writes_the_split_again_with_new_text_and_resumes(tmp_path: Any, ci_profile: Any) -> None:
    splits = stages.data_splits(ci_profile)
    out = tmp_path / "annotated.jsonl"
    assert cli.main(["data", "annotate", "--profile", "ci", "--split", "test", "--out", str(out), "--frames", "2"]) == 0
    source, written = _rows(splits.test), _rows(out)
    assert [{k: v for k, v in row.items() if k not in ("think", "answer")} for row in written] == \
        [{k: v for k, v in row.items() if k not in ("think", "answer")} for row in source]
    for row in written:
        parsed = parse_completion(row["think"] + "\n" + row["answer"])
        assert parsed.format_valid and parsed.is_normal == (row["anomaly_type"] == "Normal")
    out.write_text("".join(json.dumps(row) + "\n" for row in written[:2]))  # as if interrupted after 2 clips
    assert cli.main(["data", "annotate", "--profile", "ci", "--split", "test", "--out", str(out), "--frames", "2"]) == 0
    assert _rows(out) == written  # the rest added, in order, the first two not redone


def test_data_annotate_on_dashscope_resumes_after_a_failure_without_paying_twice(
        server: FakeChatServer, tmp_path: Any, ci_profile: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(DashScopeAnnotator, "__init__", functools.partialmethod(
        DashScopeAnnotator.__init__, cache_dir=cache, backoff_s=0.0, timeout_s=2.0))
    out = tmp_path / "annotated.jsonl"
    command = ["data", "annotate", "--profile", "ci", "--split", "test", "--backend", "dashscope",
               "--base-url", server.base_url, "--out", str(out), "--frames", "2"]
    clips = _rows(stages.data_splits(ci_profile).test)
    calls = [2 + (4 if row["anomaly_type"] != "Normal" else 2) for row in clips]  # captions, steps, answer
    server.plan = [None] * (calls[0] + 1) + [400]  # the second clip's second call is refused for good
    assert cli.main(command) == 1
    assert "HTTP 400" in capsys.readouterr().err and len(_rows(out)) == 1
    sent = len(server.requests)
    assert cli.main(command) == 0
    assert len(_rows(out)) == len(clips)
    assert len(server.requests) - sent == sum(calls) - calls[0] - 1  # the finished calls came from the cache
    for row in _rows(out):
        assert parse_completion(row["think"] + "\n" + row["answer"]).format_valid


def test_data_annotate_without_a_key_says_so(monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Any) -> None:
    monkeypatch.delenv(API_KEY_ENV)
    assert cli.main(["data", "annotate", "--profile", "ci", "--backend", "dashscope", "--out",
                     str(tmp_path / "x.jsonl")]) == 2
    assert API_KEY_ENV in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
