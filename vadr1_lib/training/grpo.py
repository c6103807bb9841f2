"""(AVA-)GRPO with TRL's ``GRPOTrainer``, with the video in every forward pass.

Stock TRL 1.16 shows the video to generation only (``docs/measurements.md``, "TRL 1.16 and video"): the
old, reference and policy log-prob forwards rebuild their multimodal inputs from *images*,
so the loss would be computed on ``<|video_pad|>`` tokens read as plain text with 1D
positions, and nothing would raise. :class:`VideoGRPOTrainer` fixes that with four small
overrides that all call ``super()``:

- ``_generate_and_score_completions``: remembers the batch's clips (their real fps is
  needed by the processor) and attaches the per-sample video tensors to the batch it
  returns, so they travel with the rollouts through TRL's shuffle and split.
- ``_tokenize_prompts``: hands the clips' metadata to the processor (frames without it
  are taken as 24 fps) and keeps the video tensors the processor made, one per sample.
  Per-sample *lists* are what TRL's ``shuffle_sequence_dict`` / ``split_tensor_dict``
  keep aligned; a patch-indexed tensor would be cut at the wrong rows.
- ``_compute_loss``: makes the batch's video visible to the policy forward.
- ``_get_per_token_logps_and_entropies``: per chunk, adds ``pixel_values_videos``,
  ``video_grid_thw``, ``second_per_grid_ts`` and ``mm_token_type_ids`` over prompt +
  completion (without the latter Qwen2.5-VL silently falls back to 1D positions). TRL's
  method has no video parameters, so the video goes in through ``functools.partial`` on
  the model it calls. Off Triton devices the log-probs come from the model's ordinary
  forward over the completion alone (``_completion_log_probs``): TRL's fused LM head
  scores every position there, the prompt's video included.

The dataset keeps light columns in Arrow (video path, weak label) and attaches decoded
frames with ``Dataset.with_transform``: frames stored in Arrow come back as nested lists
that the video processor rejects.
"""

from __future__ import annotations

import functools
import hashlib
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import trl
from trl.kernels.chunked_logprob import _use_triton

from vadr1_lib import prompts
from vadr1_lib.config import REWARD_NAMES, Profile, VideoConfig
from vadr1_lib.data import dataset, taxonomy, video
from vadr1_lib.model import modeling
from vadr1_lib.training import common, rewards

CLIP_COLUMN = "clip"  # attached by the transform: the decoded training clip (a VideoClip)
PATH_COLUMN = "video_path"  # Arrow column: where the clip comes from (AVA re-reads it trimmed)
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


INSPECT_POSITION = "inspect_position"  # a rollout's index in generation order (only while inspecting)


class VideoGRPOTrainer(common.StopsOnDivergence, common.RestoresCheckpointWeights, trl.GRPOTrainer):
    """``GRPOTrainer`` whose log-prob forwards see the video (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch_clips: list[video.VideoClip] | None = None
        self._batch_video: dict[str, list[torch.Tensor]] | None = None
        # With ``inspect_first_batch`` the first batch's numbers are kept in ``inspected``
        # (rewards per function, advantages, log-probs of policy and reference, mask, loss),
        # so that notebook 04 can redo GRPO's arithmetic by hand on what really trained.
        self.inspect_first_batch = False
        self.inspected: dict[str, Any] = {}
        self._loss_logps: torch.Tensor | None = None

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._batch_clips = [row[CLIP_COLUMN] for row in inputs]
        try:
            output = super()._generate_and_score_completions(inputs)
            output.update(self._batch_video)
            if self.inspect_first_batch and "loss" not in self.inspected:
                # TRL shuffles the scored batch before the loss; each rollout's position in
                # generation order travels with it, so ``inspected`` can put the loss's
                # numbers back beside the rewards they came from.
                output[INSPECT_POSITION] = torch.arange(len(output["advantages"]))
        finally:
            self._batch_clips = self._batch_video = None
        return output

    def _tokenize_prompts(self, prompts_batch: list) -> tuple[Any, Any, dict[str, Any]]:
        clips = self._batch_clips
        if clips is None or len(clips) != len(prompts_batch):
            raise RuntimeError("_tokenize_prompts needs the batch's clips (set by _generate_and_score_completions)")
        metadata = {k: v for k, v in modeling.video_inputs(clips).items() if k != "videos"}
        saved = self.chat_template_kwargs  # the only channel from _tokenize_prompts to the processor
        self.chat_template_kwargs = {**saved, "processor_kwargs": metadata}
        try:
            prompt_ids, images, fields = super()._tokenize_prompts(prompts_batch)
        finally:
            self.chat_template_kwargs = saved
        grids = fields["video_grid_thw"]
        if len(grids) != len(prompts_batch):
            raise ValueError(f"expected one video per prompt, got {len(grids)} videos for {len(prompts_batch)} prompts")
        self._batch_video = {
            "pixel_values_videos": list(torch.split(fields["pixel_values_videos"], grids.prod(-1).tolist())),
            "video_grid_thw": list(grids.split(1)),
            "second_per_grid_ts": [torch.tensor([float(s)]) for s in fields["second_per_grid_ts"]],
        }
        return prompt_ids, images, fields

    def _calculate_rewards(self, inputs: Any, prompts_batch: Any, completions: Any, completion_ids_list: Any) -> Any:
        # Overridden only to keep the first batch's rewards for ``inspected``.
        rewards_per_func = super()._calculate_rewards(inputs, prompts_batch, completions, completion_ids_list)
        if self.inspect_first_batch and "rewards_per_func" not in self.inspected:
            self.inspected.update(rewards_per_func=rewards_per_func.detach().cpu(), reward_names=list(self.reward_func_names),
                                  reward_weights=self.reward_weights.detach().cpu())
        return rewards_per_func

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        self._batch_video = {key: inputs[key] for key in VIDEO_KEYS}
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._batch_video = None
        if self.inspect_first_batch and "loss" not in self.inspected:
            # Back to generation order, as the rewards. With accumulation the first loss sees a
            # slice of the generated batch: ``positions`` says which rollouts it holds.
            order = torch.argsort(inputs[INSPECT_POSITION]).cpu()
            self.inspected.update(
                positions=inputs[INSPECT_POSITION].cpu()[order],
                advantages=inputs["advantages"].detach().cpu()[order],
                completion_mask=inputs["completion_mask"].detach().cpu()[order],
                policy_logps=self._loss_logps.detach().cpu()[order],
                ref_logps=None if self.beta == 0 else inputs["ref_per_token_logps"].detach().cpu()[order],
                beta=self.beta, num_generations=self.num_generations,
                loss=float(loss.detach()) * self.current_gradient_accumulation_steps)  # TRL divides by the accumulation
        return loss

    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                           logits_to_keep: int, batch_size: int | None = None,
                                           compute_entropy: bool = False, compute_aux_loss: bool = False,
                                           **multimodal: Any) -> tuple[torch.Tensor, Any, Any]:
        batch_video = self._batch_video
        if batch_video is None:
            raise RuntimeError("a log-prob forward without the batch's video would train on <|video_pad|> as text")
        processor = self.processing_class
        token_types = torch.zeros_like(input_ids)
        token_types[input_ids == processor.image_token_id] = 1
        token_types[input_ids == processor.video_token_id] = 2
        batch_size = batch_size or input_ids.size(0)
        logps, entropies, aux_losses = [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            chunk_video = {key: torch.cat(batch_video[key][start:end]).to(input_ids.device) for key in VIDEO_KEYS}
            chunk_model = functools.partial(model, **chunk_video)
            chunk_inputs = dict(input_ids=input_ids[start:end], attention_mask=attention_mask[start:end],
                                **{**multimodal, "mm_token_type_ids": token_types[start:end]})
            if compute_aux_loss or _use_triton(input_ids.device):
                chunk = super()._get_per_token_logps_and_entropies(
                    chunk_model, chunk_inputs.pop("input_ids"), chunk_inputs.pop("attention_mask"), logits_to_keep,
                    batch_size=end - start, compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss,
                    **chunk_inputs)
            else:
                chunk = self._completion_log_probs(chunk_model, chunk_inputs, logits_to_keep, compute_entropy)
            logps.append(chunk[0])
            entropies.append(chunk[1])
            aux_losses.append(chunk[2])
        logps = torch.cat(logps)
        if self.inspect_first_batch and torch.is_grad_enabled():  # the loss's policy forward (the others: no grad)
            self._loss_logps = logps
        return (logps, torch.cat(entropies) if compute_entropy else None,
                torch.stack(aux_losses).mean() if compute_aux_loss else None)

    def _completion_log_probs(self, model: Any, inputs: dict[str, Any], logits_to_keep: int,
                              compute_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        """The completion's log-probs (and entropies) from the model's ordinary forward.

        Why not TRL's fused LM head here: off Triton devices (a CPU) it scores every position,
        the prompt's video tokens included, so with a real vocabulary the prompt dominates a
        step (measured on a 1,300-token prompt with the full Qwen2.5 vocabulary: four fifths
        of the step). ``logits_to_keep`` gives the logits of the completion alone; the values
        are TRL's (temperature-scaled log-softmax, its entropy).
        """
        with self.accelerator.autocast():
            logits = model(**inputs, logits_to_keep=logits_to_keep + 1, use_cache=False).logits[:, :-1]
        log_probs = (logits.float() / self.temperature).log_softmax(-1)
        targets = inputs["input_ids"][:, -logits_to_keep:]
        token_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1) if compute_entropy else None
        return token_log_probs, entropy, None


# ---------------------------------------------------------------------------------------
# Data, arguments, training


def rl_dataset(records: list[dataset.RLRecord], profile: Profile) -> datasets.Dataset:
    """Light Arrow rows (id, video path, weak label) plus, on access, the decoded clip and the prompt.

    Clips are decoded the training way (about 2 fps, 4 to 16 frames) and cached, because
    TRL's sampler fetches each video G times per step.
    """
    missing = dataset.missing_videos(records)
    if missing:
        shown = ", ".join(map(str, missing[:5]))
        raise FileNotFoundError(f"{len(missing)} of {len(records)} RL videos are missing, e.g. {shown}")
    for record in records:
        taxonomy.binary_label(record.solution)  # an unknown weak label fails here, not mid-training
    if profile.grpo.balanced_batches:
        records = alternate_verdicts(records, profile.grpo.seed)
    rows = datasets.Dataset.from_list([
        {"id": r.id, PATH_COLUMN: str(r.path), "solution": r.solution} for r in records
    ])
    return rows.with_transform(ClipAttacher(profile.video))


class ClipAttacher:
    """The dataset's on-access transform: decode each row's clip (cached) and build its prompt.

    A module-level class rather than a closure: ``datasets`` fingerprints a transform by
    pickling it, and a closure over the cache could not be hashed (it warned on every run)."""

    def __init__(self, video_config: VideoConfig) -> None:
        self.video_config = video_config
        self.clips = common.BoundedCache(self.decode, lambda clip: clip.frames.nbytes)

    def decode(self, path: str) -> video.VideoClip:
        return video.training_clip(path, self.video_config)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        decoded = [self.clips(path) for path in batch[PATH_COLUMN]]
        return {**batch, CLIP_COLUMN: decoded,
                "prompt": [prompts.build_messages("p2c", video=clip.frames) for clip in decoded]}


def alternate_verdicts(records: list[dataset.RLRecord], seed: int) -> list[dataset.RLRecord]:
    """The RL videos in an order that alternates Abnormal and Normal (each verdict shuffled
    by ``seed``; the larger one's surplus at the end), for ``grpo.balanced_batches``.

    Why: TRL's sampler, told not to shuffle, takes consecutive videos into a step, so every
    step then holds both verdicts. With a few videos per step and shuffled ones, a step of
    only Normal videos pushes every rollout toward Normal (it is the answer that earns the
    format and length rewards most easily), which is how RL drifted to Normal on the cpu
    profile. As for SFT's balanced batches, the verdict's prior then cancels within a step.
    """
    order = torch.Generator().manual_seed(seed)
    groups = [[r for r in records if r.is_abnormal == verdict] for verdict in (True, False)]
    shuffled = [[group[i] for i in torch.randperm(len(group), generator=order).tolist()] for group in groups]
    alternating = [record for pair in zip(*shuffled) for record in pair]
    shorter = min(len(group) for group in shuffled)
    return alternating + [record for group in shuffled for record in group[shorter:]]


def stage_dir(profile: Profile, *, use_ava: bool) -> Path:
    return profile.run_dir / ("ava-grpo" if use_ava else "grpo")


AVA_ONLY_FIELDS = ("use_ava", "ava_abnormal_bonus", "ava_normal_penalty", "ava_trim_fraction", "ava_rule", "ava_verdict")


def fingerprint(profile: Profile, start_model: str | Path, rl_file: Path, *, use_ava: bool) -> str:
    """What a GRPO result depends on, including the SFT result it starts from (its own fingerprint).

    Plain GRPO leaves out what only AVA reads (its fields, its reward weight), so that trying
    another AVA setting retrains AVA-GRPO alone."""
    settings = asdict(profile.grpo)
    settings["reward_weights"] = reward_weights(profile, use_ava=use_ava)
    if not use_ava:
        settings = {key: value for key, value in settings.items() if key not in AVA_ONLY_FIELDS}
    blob = json.dumps({"start": modeling.model_identity(start_model),
                       "rl": hashlib.sha256(Path(rl_file).read_bytes()).hexdigest(), "use_ava": use_ava,
                       "model": asdict(profile.model), "video": asdict(profile.video), "grpo": settings,
                       "train_settings": asdict(profile.train)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# TRL's per-step logs kept beside the rewards: the total reward, the KL to the reference, the mean
# completion length, the share of groups with no reward spread (whose advantages are all 0).
TRAINING_CURVES = ("reward", "kl", "completions/mean_length", "frac_reward_zero_std")


def training_arguments(profile: Profile, output_dir: Path, processor: Any, *, use_ava: bool = True) -> trl.GRPOConfig:
    """TRL's config from the profile. ``loss_type="grpo"`` averages over each completion's
    tokens, then over completions (``docs/vad-r1.md``, "GRPO as the paper uses it"); TRL's default
    ``dapo`` would not. Precision and memory settings come from the ``train`` section, as for SFT."""
    g = profile.grpo
    return trl.GRPOConfig(
        **common.trainer_arguments(profile, output_dir, g),
        num_generations=g.num_generations,
        beta=g.beta,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        reward_weights=reward_weights(profile, use_ava=use_ava),
        shuffle_dataset=not g.balanced_batches,  # balanced: the alternating order of rl_dataset is kept
        # TRL suppresses only the image token; any vision token in a completion breaks the next forward.
        # A policy that diverged (weights blown up without a NaN yet) scores tokens NaN, and
        # sampling from them fails inside generate with torch's "probability tensor contains
        # inf, nan"; with those scores replaced the step runs on to its NaN loss, which stops
        # training with the step named (common.StopsOnDivergence). Finite scores are untouched.
        generation_kwargs={"suppress_tokens": modeling.vision_token_ids(processor).tolist(),
                           "remove_invalid_values": True},
        loss_type="grpo",
        scale_rewards="group",
    )


def thirds(values: list[float]) -> tuple[float, float, float]:
    """Means of the first, middle and last third of a per-step curve: a reward over a few
    videos per step is noisy, the thirds show whether it rose."""
    if len(values) < 3:
        raise ValueError(f"need at least 3 steps to compare thirds, got {len(values)}")
    third = len(values) // 3
    first, middle, last = values[:third], values[third:len(values) - third], values[len(values) - third:]
    return statistics.fmean(first), statistics.fmean(middle), statistics.fmean(last)


def reward_weights(profile: Profile, *, use_ava: bool) -> list[float] | None:
    """``grpo.reward_weights`` for the rewards in use (AVA's dropped without AVA); None: 1 each."""
    weights = profile.grpo.reward_weights  # one per REWARD_NAMES (the profile's schema checks it)
    if weights is None:
        return None
    return list(weights if use_ava else weights[:REWARD_NAMES.index("ava")])


@dataclass
class GRPOResult:
    output_dir: Path
    use_ava: bool
    train_seconds: float
    global_step: int
    log_history: list[dict[str, Any]]
    resumed_from: str | None
    step_seconds: list[float]  # TRL's per-step time (generation, rewards, loss), as logged
    ava_history: list[dict[str, Any]]  # this process's AVA calls (empty without AVA)
    flip_rate: float | None
    flip_rates: dict[str, dict[str, Any]]  # by branch and by whether the rollout was right (empty without AVA)

    @property
    def mean_step_seconds(self) -> float | None:
        return statistics.fmean(self.step_seconds) if self.step_seconds else None

    def record(self, profile: Profile, start_model: str | Path, fingerprint_value: str) -> dict[str, Any]:
        """What the stage marker keeps: settings identity, timing, the log and the reward breakdown.

        ``mode`` is the training mode the weights were made in: loading reads it to
        re-quantize a QLoRA adapter's base.
        """
        return {
            "stage": "ava-grpo" if self.use_ava else "grpo", "profile": profile.name, "mode": profile.train.mode,
            "start_model": str(start_model), "fingerprint": fingerprint_value, "train_seconds": self.train_seconds,
            "global_step": self.global_step, "resumed_from": self.resumed_from,
            "mean_step_seconds": self.mean_step_seconds, "step_seconds": self.step_seconds,
            "reward_curves": self.reward_curves(), "flip_rate": self.flip_rate, "flip_rates": self.flip_rates,
            "ava_history": self.ava_history, "log_history": self.log_history,
        }

    def reward_curves(self) -> dict[str, list[float]]:
        """Per logged step: the mean of each reward function and of the total, the KL to the
        reference, the mean completion length and the share of groups whose rewards were all
        equal (:data:`TRAINING_CURVES`): what moves during RL, and what it costs."""
        curves: dict[str, list[float]] = {}
        for entry in self.log_history:
            for key, value in entry.items():
                if key in TRAINING_CURVES or (key.startswith("rewards/") and key.endswith("/mean")):
                    curves.setdefault(key, []).append(value)
        return curves


def verdict_reference(profile: Profile, sft_file: Path | None, video_root: Path | None = None
                      ) -> list[tuple[str, bool]]:
    """The SFT targets (text, is_abnormal) that show where a verdict is decided, when AVA reads
    its re-query's verdict there (``grpo.ava_verdict: deciding-token``); else none."""
    if sft_file is None or profile.grpo.ava_verdict != "deciding-token":
        return []
    return [(r.target_text, r.is_abnormal) for r in dataset.load_sft(sft_file, video_root=video_root)]


def reward_functions(profile: Profile, processor: Any, trainer_getter: Any, *, use_ava: bool,
                     reference: list[tuple[str, bool]] = ()) -> list[Any]:
    """Accuracy, format and length (and AVA), in the order of :data:`REWARD_NAMES`; ``reference``
    (:func:`verdict_reference`) shows AVA where a verdict is decided."""
    funcs: list[Any] = [rewards.accuracy_reward, rewards.FormatReward(profile.grpo.format_rule),
                        rewards.LengthReward(profile.grpo, processor.tokenizer)]
    if use_ava:
        funcs.append(rewards.AnomalyVerificationReward(trainer_getter, processor, profile, profile.grpo.seed,
                                                       reference_targets=reference))
    return funcs


def build_trainer(profile: Profile, start_model: str | Path, rl_file: Path, *, use_ava: bool, checkpoints: Path,
                  video_root: Path | None = None, sft_file: Path | None = None) -> tuple[VideoGRPOTrainer, Any]:
    """The trainer :func:`train` runs, and its processor: the model in the profile's mode, the
    rewards, the video-aware RL dataset."""
    records = dataset.load_rl(rl_file, video_root=video_root)
    model, processor = modeling.load_for_training(str(start_model), profile)
    trainer: VideoGRPOTrainer | None = None
    funcs = reward_functions(profile, processor, lambda: trainer, use_ava=use_ava,
                             reference=verdict_reference(profile, sft_file, video_root))
    trainer = VideoGRPOTrainer(model=model, reward_funcs=funcs,
                               args=training_arguments(profile, checkpoints, processor, use_ava=use_ava),
                               train_dataset=rl_dataset(records, profile), processing_class=processor)
    return trainer, processor


def inspect_first_batch(profile: Profile, start_model: str | Path, rl_file: Path, scratch: Path, *, use_ava: bool,
                        video_root: Path | None = None, sft_file: Path | None = None) -> dict[str, Any]:
    """One training step of the profile's GRPO, with the first batch's numbers kept (see
    :class:`VideoGRPOTrainer`): what notebook 04 recomputes by hand. Writes only to ``scratch``."""
    from vadr1_lib import config

    one_step = config.load_profile(profile.name, [*profile.overrides, "grpo.max_steps=1", "launch.report_to=[]"])
    trainer, _ = build_trainer(one_step, start_model, rl_file, use_ava=use_ava, checkpoints=Path(scratch),
                               video_root=video_root, sft_file=sft_file)
    trainer.args.save_strategy = "no"
    trainer.inspect_first_batch = True
    common.print_progress_as_text(trainer, "GRPO, one inspected step")
    trainer.train()
    return trainer.inspected


def train(profile: Profile, start_model: str | Path, rl_file: Path, *, use_ava: bool,
          output_dir: Path | None = None, video_root: Path | None = None, sft_file: Path | None = None) -> GRPOResult:
    """GRPO (with AVA when ``use_ava``) from ``start_model`` on the RL split; saves model/adapter + processor.

    Resumes from the newest checkpoint in ``<output_dir>/checkpoints`` when one exists.
    """
    output_dir = Path(output_dir or stage_dir(profile, use_ava=use_ava))
    checkpoints = output_dir / "checkpoints"
    trainer, processor = build_trainer(profile, start_model, rl_file, use_ava=use_ava, checkpoints=checkpoints,
                                       video_root=video_root, sft_file=sft_file)
    seconds, resume = common.train_and_save(trainer, processor, output_dir, checkpoints)
    ava = trainer.reward_funcs[-1] if use_ava else None
    history = trainer.state.log_history
    return GRPOResult(output_dir, use_ava, seconds, trainer.state.global_step, history, resume,
                      [entry["step_time"] for entry in history if "step_time" in entry],
                      ava.history if ava else [], ava.flip_rate if ava else None, ava.flip_rates() if ava else {})


# ---------------------------------------------------------------------------------------
# GRPO's arithmetic, small enough to follow by hand (notebook 04). TRL computes the same
# quantities inside GRPOTrainer; these exist to show them, and tests pin them.


def group_advantages(rewards_: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean(r)) / (std(r) + eps) within each group of ``group_size`` consecutive rollouts.

    Uses the sample standard deviation (as the release and TRL do). A group whose rollouts
    all scored the same gets advantage 0 everywhere: it teaches nothing.
    """
    grouped = rewards_.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).view(-1)


def k3_kl(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate exp(ref - cur) - (ref - cur) - 1: never negative, 0 where they agree."""
    delta = ref_logps - policy_logps
    return torch.exp(delta) - delta - 1


def grpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              beta: float) -> torch.Tensor:
    """The release's loss with one optimisation step per batch of rollouts.

    The ratio exp(logp - logp.detach()) equals 1 in value (the rollouts were sampled by the
    current policy) but carries the policy gradient A * d logp. Per token: -(ratio * A) +
    beta * KL; averaged over each completion's tokens, then over completions.
    """
    ratio = torch.exp(policy_logps - policy_logps.detach())
    per_token = -(ratio * advantages.unsqueeze(1)) + beta * k3_kl(policy_logps, ref_logps)
    return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
