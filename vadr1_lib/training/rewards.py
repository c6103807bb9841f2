"""The rewards of (AVA-)GRPO: accuracy, format, length and anomaly verification.

Every reward follows TRL's contract, ``reward(completions, **kwargs) -> list[float]``:
``GRPOTrainer`` calls it once per generation batch with the B*G completions of the batch and
every dataset column as a keyword list of the same length (here ``solution``, the weak
label, and ``video_path``), plus ``completion_ids`` (the generated token ids, up to and
including the first EOS) and ``log_metric``. Completions arrive as strings, or for
conversational prompts as ``[{"role": "assistant", "content": "..."}]``; both are read.
All rewards read the text through the one parser, :func:`vadr1_lib.parsing.parse_completion`,
and never raise on model output (garbage, empty, odd unicode): a bad completion scores 0.

Decisions where the release leaves room (``docs/fidelity.md``, "Rewards"):

- **Accuracy** compares the binary label of ``<which>`` with the weak label: Normal when
  ``<which>`` is exactly ``Normal`` (surrounding whitespace aside), Abnormal for anything
  else; the release compared ``<which>`` with the literal weak label. SFT teaches fine-grained categories in ``<which>`` (``Fire``,
  ``Fighting`` …), so ``<which>Fire</which>`` on an Abnormal video earns 1: RL keeps the
  category vocabulary instead of collapsing it to the literal word ``Abnormal``. A
  completion without ``<which>`` (or with an empty one) claims nothing and earns 0.
- **Length** counts tokens as ``len(completion_ids)`` (TRL's own completion length,
  including the closing ``<|im_end|>``); the ranges are inclusive.
- **AVA** judges each rollout on its own answer (the release read a stale variable: the
  last rollout of the group). Its re-query is one greedy answer: the release drew one
  sample; the greedy answer is the model's most likely verdict on the trimmed view, and
  because it is deterministic, rollouts whose trims keep the same frames (common: spans
  that differ by less than a frame, and every "first/last 30%" cut of one video) share a
  single generation, which keeps AVA's extra cost well below a second round of rollouts.
  "Now says Normal" means ``<which>``
  is exactly ``Normal``; "now says Abnormal" means an explicit non-Normal ``<which>``: a
  re-answer without ``<which>`` says nothing and moves no reward. A rollout on the
  penalty branch that earned neither accuracy nor format is not re-queried at all: it has
  nothing to lose, so the query would be pure cost.

Groups: TRL's ``RepeatSampler`` repeats each prompt G times in a row and the trainer
normalises rewards with ``rewards.view(-1, G)`` over the batch gathered from all
processes, so a group is a run of G consecutive completions in that global order. A group
can straddle processes (the paper's 4 GPUs with one video per step hold one completion of
each group each), so :class:`LengthReward` gathers the correctness flags from every
process before counting.
"""

from __future__ import annotations

import bisect
import contextlib
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, Trainer

from vadr1_lib import parsing, prompts
from vadr1_lib.config import GRPOConfig, Profile, require_choice
from vadr1_lib.data import taxonomy, video
from vadr1_lib.model import modeling
from vadr1_lib.prompts import ABNORMAL_LABEL, NORMAL_LABEL


def completion_text(completion: Any) -> str:
    """The text of one completion as TRL passes it: a string, or a list of chat messages.

    For messages, the content of the last assistant turn (a string or a list of text
    blocks). Anything else reads as the empty string, which every reward scores 0.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role") == "assistant":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, Sequence):
                    return "".join(block.get("text", "") for block in content
                                   if isinstance(block, dict) and isinstance(block.get("text"), str))
                return ""
    return ""


def _accuracy(parsed: parsing.ParsedCompletion, solution: str) -> float:
    if not parsed.which:
        return 0.0
    return 1.0 if parsed.predicted_label == taxonomy.binary_label(solution) else 0.0


def _check_lengths(completions: Sequence[Any], name: str, values: Sequence[Any]) -> None:
    if len(values) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(values)} values of {name!r}")


def accuracy_reward(completions: Sequence[Any], solution: Sequence[str], **kwargs: Any) -> list[float]:
    """1.0 when the completion's Normal/Abnormal label (from ``<which>``) equals the weak label, else 0.0."""
    _check_lengths(completions, "solution", solution)
    return [_accuracy(parsing.parse_completion(completion_text(c)), s) for c, s in zip(completions, solution)]


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the whole completion follows the normal or the abnormal P2C-CoT template, else 0.0."""
    return [1.0 if parsing.parse_completion(completion_text(c)).format_valid else 0.0 for c in completions]


class FormatReward:
    """:func:`format_reward` as GRPO's reward, paid under ``grpo.format_rule``: ``"any"`` (the
    paper's and the release's) pays every well-formed completion; ``"right"`` pays a
    well-formed completion only when its verdict is right, as the length bonus does.

    Why ``"right"`` exists: a Normal answer is short and nearly always well-formed, a long
    Abnormal one breaks more often when sampled, so where the model cannot yet tell the
    clips apart the format reward alone pays answering Normal (``docs/measurements.md``,
    "Against the pull toward Normal"). Paid on right answers only, it still holds the template
    together but no longer prefers one verdict.
    """

    __name__ = "format_reward"

    def __init__(self, rule: str = "any") -> None:
        self.rule = require_choice("grpo.format_rule", rule)

    def __call__(self, completions: Sequence[Any], solution: Sequence[str], **kwargs: Any) -> list[float]:
        formats = format_reward(completions)
        if self.rule == "any":
            return formats
        return [f * a for f, a in zip(formats, accuracy_reward(completions, solution=solution))]


class LengthReward:
    """Group-aware length bonus: ``length_bonus`` for a correct completion whose token count
    lies in the range of its label, only in a group with more than one correct completion.

    One correct rollout alone already stands out through accuracy; among several correct
    ones the bonus prefers those of a sensible length (neither a bare answer nor rambling).
    ``tokenizer`` counts tokens when ``completion_ids`` is not passed (direct calls).
    """

    __name__ = "length_reward"

    def __init__(self, cfg: GRPOConfig, tokenizer: Any = None) -> None:
        if cfg.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {cfg.num_generations}")
        self.cfg = cfg
        self.tokenizer = tokenizer

    def token_counts(self, texts: Sequence[str], completion_ids: Sequence[Sequence[int]] | None) -> list[int]:
        if completion_ids is not None:
            return [len(ids) for ids in completion_ids]
        if self.tokenizer is None:
            raise TypeError("length_reward needs completion_ids (TRL passes them) or a tokenizer")
        return [len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]

    def range_for(self, label: str) -> tuple[int, int]:
        """The token-count range of a right answer with this binary label."""
        low, high = self.cfg.length_range_normal if label == NORMAL_LABEL else self.cfg.length_range_abnormal
        return low, high

    def in_range(self, count: int, label: str) -> bool:
        low, high = self.range_for(label)
        return low <= count <= high

    def __call__(self, completions: Sequence[Any], solution: Sequence[str],
                 completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float]:
        from accelerate import PartialState
        from accelerate.utils import gather_object

        _check_lengths(completions, "solution", solution)
        texts = [completion_text(c) for c in completions]
        correct = [_accuracy(parsing.parse_completion(t), s) == 1.0 for t, s in zip(texts, solution)]
        counts = self.token_counts(texts, completion_ids)
        _check_lengths(completions, "completion_ids", counts)
        group_size = self.cfg.num_generations
        everyone = list(gather_object(correct))  # the global batch, in the order TRL groups it
        if len(everyone) % group_size:
            raise ValueError(f"{len(everyone)} completions do not split into groups of {group_size}")
        offset = PartialState().process_index * len(correct)
        rewards = []
        for i, (is_correct, count, label) in enumerate(zip(correct, counts, solution)):
            start = (offset + i) // group_size * group_size
            crowded = sum(everyone[start:start + group_size]) > 1
            bonus = is_correct and crowded and self.in_range(count, taxonomy.binary_label(label))
            rewards.append(self.cfg.length_bonus if bonus else 0.0)
        return rewards


GenerateFn = Callable[[list[video.VideoClip]], list[str]]
VERDICT_END = "</which>"  # the re-query's answer is complete once this is written


class VerdictReader:
    """The verdict of a re-query's answer, possibly cut short: Normal, Abnormal or None.

    A closed ``<which>`` decides, as for the rewards (exactly ``Normal``: Normal; any other
    content: Abnormal). Given ``reference`` targets (text, is_abnormal), an answer without
    one is decided once its text has committed to a verdict: it begins some target of that
    verdict and no target of the other. With the Mini template every target shares its
    first step and the verdict is the first word of step 2 ("Nothing" against "At" or
    "From"), so the re-query can stop there instead of writing ~150 more tokens. Text that
    leaves every target before that point decides nothing and runs on to ``</which>``.
    Free-text targets (the release's) part ways by accident of wording, which is why the
    7B profiles read ``<which>`` (``grpo.ava_verdict``).
    """

    def __init__(self, reference: Sequence[tuple[str, bool]] = ()) -> None:
        self.targets = {verdict: sorted({text for text, abnormal in reference if abnormal == (verdict == ABNORMAL_LABEL)})
                        for verdict in (NORMAL_LABEL, ABNORMAL_LABEL)}
        if reference and not all(self.targets.values()):
            raise ValueError("reading a verdict from its first words needs reference targets of both verdicts")
        self.uses_prefixes = bool(reference)

    def __call__(self, text: str) -> str | None:
        if VERDICT_END in text:
            parsed = parsing.parse_completion(text)
            return parsed.predicted_label if parsed.which else None
        if not self.uses_prefixes:
            return None
        begins = {verdict: _begins_one_of(text, targets) for verdict, targets in self.targets.items()}
        if begins[NORMAL_LABEL] != begins[ABNORMAL_LABEL]:
            return NORMAL_LABEL if begins[NORMAL_LABEL] else ABNORMAL_LABEL
        return None


def _begins_one_of(text: str, sorted_targets: Sequence[str]) -> bool:
    """Whether ``text`` is the beginning of a target (the candidates sort right after it)."""
    index = bisect.bisect_left(sorted_targets, text)
    return index < len(sorted_targets) and sorted_targets[index].startswith(text)


class VerdictStop(StoppingCriteria):
    """A ``generate`` stopping criterion: each row stops once :class:`VerdictReader` reads a
    verdict in what it has written after the ``prompt_length`` prompt tokens."""

    def __init__(self, reader: VerdictReader, tokenizer: Any, prompt_length: int) -> None:
        self.reader, self.tokenizer, self.prompt_length = reader, tokenizer, prompt_length

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([self.reader(text) is not None for text in texts], device=input_ids.device)


class AnomalyVerificationReward:
    """AVA: re-ask the model on a trimmed video and reward answers that survive the check.

    Per rollout (``docs/fidelity.md``, "Rewards"):

    - Abnormal with a valid span ``[s, e]``: drop the frames inside the span, resample as
      many frames as training uses from what is left, re-ask; ``ava_abnormal_bonus`` when
      the answer is now Normal (the claimed anomaly was where the rollout said it was).
      With ``grpo.ava_rule: label`` the bonus is paid only where the RL set's weak label
      is Abnormal too, and a claim on a Normal-labelled video is not re-asked: cutting any
      span out of a normal video leaves a normal video, so under the paper's rule
      (``paper``) a false alarm with any span is "verified" whenever the model answers
      the rest Normal.
    - Normal: drop the first or the last ``ava_trim_fraction`` (seeded coin per rollout),
      re-ask; ``ava_normal_penalty`` when the answer is now Abnormal, only for a rollout
      that earned accuracy or format.
    - Abnormal without a valid span: not re-asked, 0, as in the release (its penalty needs
      an answer that said Normal). Sending it down the Normal branch punished a claim that
      the verifier confirmed.

    The re-query needs only the verdict. It stops at ``</which>``, or, with
    ``grpo.ava_verdict: deciding-token``, as soon as its text has committed to one verdict
    (:class:`VerdictReader`: with the Mini template, the first word of step 2, a tenth of
    the answer).

    All re-queries of a call go through the model in one batched ``generate`` (left
    padding), in eval mode under ``torch.no_grad()``; inside a trainer under
    ``trl.models.unwrap_model_for_generation`` (DDP / ZeRO-3), and the training mode is
    restored afterwards. ``trainer_or_model_getter`` returns the trainer (or a bare model)
    when called, because the trainer is built after its reward functions.
    ``generate_fn`` replaces the model call (tests): clips in, one completion text per clip out.

    ``history`` gets one dict per call (per-rollout values, branches, flips, timing);
    ``flip_rate`` is the share of re-queries whose label differs from the rollout's.
    """

    __name__ = "ava_reward"

    def __init__(self, trainer_or_model_getter: Callable[[], Any] | None, processor: Any, profile: Profile,
                 seed: int | None = None, *, generate_fn: GenerateFn | None = None,
                 reference_targets: Sequence[tuple[str, bool]] = ()) -> None:
        if trainer_or_model_getter is None and generate_fn is None:
            raise ValueError("AVA needs a trainer/model getter or a generate_fn")
        cfg = profile.grpo
        video.head_tail_trim(True, cfg.ava_trim_fraction)  # validates the fraction now, not mid-training
        require_choice("grpo.ava_rule", cfg.ava_rule)
        require_choice("grpo.ava_verdict", cfg.ava_verdict)
        if cfg.ava_verdict == "deciding-token" and not reference_targets and generate_fn is None:
            # A scripted generate_fn (tests, notebook sketches) writes whole answers: <which> reads them.
            raise ValueError("grpo.ava_verdict: deciding-token needs the SFT targets to know where a verdict is decided")
        self.verdict = VerdictReader(reference_targets if cfg.ava_verdict == "deciding-token" else ())
        self.cfg = cfg
        self.video_cfg = profile.video
        self.processor = processor
        self._source = trainer_or_model_getter
        self._generate_fn = generate_fn
        self._rng = random.Random(cfg.seed if seed is None else seed)
        self._infos: dict[str, video.VideoInfo] = {}
        self.history: list[dict[str, Any]] = []

    # -- the reward -------------------------------------------------------------------

    def __call__(self, completions: Sequence[Any], solution: Sequence[str], video_path: Sequence[str],
                 log_metric: Callable[[str, float], None] | None = None, **kwargs: Any) -> list[float]:
        start = time.perf_counter()
        _check_lengths(completions, "solution", solution)
        _check_lengths(completions, "video_path", video_path)
        rewards = [0.0] * len(completions)
        branches: list[str] = []
        queries: list[tuple[int, str | None, bool, int, tuple[float, float], list[int]]] = []  # + view, cut, frames kept
        views: dict[tuple[str, tuple[int, ...]], int] = {}  # (video, frames kept) -> index into clips
        clips: list[video.VideoClip] = []
        untrimmable = 0
        for i, (completion, label, path) in enumerate(zip(completions, solution, video_path)):
            parsed = parsing.parse_completion(completion_text(completion))
            if parsed.is_normal:
                branch = "normal"
                exclude = video.head_tail_trim(self._rng.random() < 0.5, self.cfg.ava_trim_fraction)
                if _accuracy(parsed, label) == 0.0 and not parsed.format_valid:
                    branches.append("normal-skipped")  # nothing earned, nothing to lose: the query is pure cost
                    continue
            elif parsed.which and parsed.span is not None:
                branch, exclude = "abnormal", parsed.span
                if self.cfg.ava_rule == "label" and taxonomy.binary_label(label) != ABNORMAL_LABEL:
                    branches.append("abnormal-unpaid")  # a false alarm: no bonus can come of the query
                    continue
            else:
                branches.append("abnormal-no-span" if parsed.which else "no-verdict")
                continue
            indices = self.trimmed_indices(path, exclude)
            if indices is None:
                branches.append(f"{branch}-untrimmable")
                untrimmable += 1
                continue
            branches.append(branch)
            view = (path, tuple(indices))
            if view not in views:  # rollouts whose trims keep the same frames share one query
                views[view] = len(clips)
                clips.append(video.load_clip(path, indices))
            queries.append((i, parsed.predicted_label if parsed.which else None, _accuracy(parsed, label) == 1.0,
                            views[view], exclude, indices))
        unique_answers = self.ask(clips)
        if len(unique_answers) != len(clips):
            raise RuntimeError(f"generate_fn returned {len(unique_answers)} answers for {len(clips)} clips")
        bonus = penalty = 0
        # One per re-query: which rollout and branch, was the rollout right, the span cut (a
        # fraction of the video), the frames the verifier saw, what it answered, and whether
        # that flipped the rollout's verdict.
        checks = []
        for (i, original, right, view_index, cut, kept) in queries:
            answer = completion_text(unique_answers[view_index])
            now = self.verdict(answer)
            checks.append({"rollout": i, "branch": branches[i], "right": right, "cut": cut, "kept_frames": kept, "answer": answer,
                           "flipped": now is not None and now != original})
            if branches[i] == "abnormal" and now == NORMAL_LABEL:
                rewards[i], bonus = self.cfg.ava_abnormal_bonus, bonus + 1
            elif branches[i] == "normal" and now == ABNORMAL_LABEL:
                rewards[i], penalty = self.cfg.ava_normal_penalty, penalty + 1
        flips = sum(check["flipped"] for check in checks)
        record = {
            "rollouts": len(completions), "queries": len(queries), "generations": len(clips), "flips": flips,
            "flip_rate": flips / len(queries) if queries else None, "bonus": bonus, "penalty": penalty,
            "untrimmable": untrimmable, "rewards": rewards, "branches": branches, "checks": checks,
            "seconds": time.perf_counter() - start,
        }
        self.history.append(record)
        if log_metric is not None:
            log_metric("ava/queries", float(len(queries)))
            if queries:
                log_metric("ava/flip_rate", flips / len(queries))
        return rewards

    def flip_rates(self) -> dict[str, dict[str, float | int | None]]:
        """Flip rates over every call so far, split by branch and by whether the rollout was
        right: what the verifier does with right and wrong claims tells whether AVA can pay."""
        split: dict[str, list[bool]] = {}
        for record in self.history:
            for check in record.get("checks", []):
                key = f"{check['branch']}, {'right' if check['right'] else 'wrong'} rollout"
                split.setdefault(key, []).append(check["flipped"])
        return {key: {"queries": len(flips), "flip_rate": sum(flips) / len(flips)} for key, flips in sorted(split.items())}

    @property
    def flip_rate(self) -> float | None:
        """Flips over re-queries, over every call so far (None before the first re-query)."""
        queries = sum(record["queries"] for record in self.history)
        return sum(record["flips"] for record in self.history) / queries if queries else None

    def trimmed_indices(self, path: str, exclude: tuple[float, float]) -> list[int] | None:
        """Training's frame count, sampled from what is left after dropping ``exclude``;
        None when the span covers every frame (nothing left to show)."""
        info = self._infos.get(path)
        if info is None:
            info = self._infos[path] = video.read_video_info(path)
        count = len(video.release_frame_indices(info.num_frames, info.fps, target_fps=self.video_cfg.train_fps,
                                                min_frames=self.video_cfg.min_frames,
                                                max_frames=self.video_cfg.max_frames))
        try:
            return video.trimmed_frame_indices(info.num_frames, exclude, count)
        except ValueError:
            return None

    # -- the model call ---------------------------------------------------------------

    def ask(self, clips: list[video.VideoClip], reader: VerdictReader | None = None) -> list[str]:
        """The re-query: each clip's answer, stopped once ``reader`` (default: the profile's
        :attr:`verdict`) reads a verdict in it; ``generate_fn``'s answers when one was given."""
        if self._generate_fn is not None:
            return self._generate_fn(clips)
        return self._generate_with_model(clips, reader or self.verdict)

    def _generate_with_model(self, clips: list[video.VideoClip], reader: VerdictReader) -> list[str]:
        """One batched, left-padded ``generate`` over all clips (see the class docstring).

        Inside a trainer the unwrap context is entered even with no clips, because under
        ZeRO-3 it gathers parameters collectively and every process must take part.
        """
        source = self._source()
        if isinstance(source, Trainer):
            from trl.models import unwrap_model_for_generation

            context = unwrap_model_for_generation(source.model_wrapped, source.accelerator,
                                                  gather_deepspeed3_params=source.args.ds3_gather_for_generation,
                                                  gradient_checkpointing_kwargs=source.args.activation_checkpointing_kwargs)
        else:
            context = contextlib.nullcontext(source)
        with context as model, torch.no_grad():
            if not clips:
                return []
            was_training = model.training
            model.eval()
            try:
                text = self.processor.apply_chat_template(prompts.build_messages("p2c"), add_generation_prompt=True,
                                                          tokenize=False)
                inputs = self.processor(text=[text] * len(clips), return_tensors="pt", padding=True,
                                        padding_side="left", **modeling.video_inputs(clips)).to(model.device)
                kwargs = modeling.generation_kwargs(self.processor, self.cfg.max_completion_length)
                # Only the verdict is read, so a row stops once it has one (the greedy prefix is
                # the same as without stopping). Parameters are whole inside the unwrap context,
                # so processes need not step together.
                prompt_length = inputs["input_ids"].shape[1]
                stop = VerdictStop(reader, self.processor.tokenizer, prompt_length)
                output = model.generate(**inputs, **kwargs, stopping_criteria=[stop], synced_gpus=False)
            finally:
                model.train(was_training)
        return self.processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)


def verdict_agreement(ava: AnomalyVerificationReward, clips: list[video.VideoClip]) -> dict[str, Any]:
    """How often the verdict AVA reads from its cut-short re-query is the verdict of the whole
    greedy answer's ``<which>``, on ``clips``, and what each costs in generated tokens."""
    whole_reader = VerdictReader()
    short, whole = ava.ask(clips), ava.ask(clips, reader=whole_reader)
    pairs = [(ava.verdict(a), whole_reader(b)) for a, b in zip(short, whole)]
    tokens = ava.processor.tokenizer
    count = lambda texts: statistics.fmean(len(tokens(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return {"clips": len(clips), "agree": sum(a == b for a, b in pairs),
            "agreement": sum(a == b for a, b in pairs) / len(pairs) if pairs else None,
            "undecided_short": sum(a is None for a, _ in pairs), "undecided_whole": sum(b is None for _, b in pairs),
            "tokens_short": count(short) if short else None, "tokens_whole": count(whole) if whole else None}
