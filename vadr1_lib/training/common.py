"""What SFT and GRPO share: the trainer settings, the train-resume-save step and a
byte-bounded cache.

Both stages run TRL's own loop (optimizer, schedule, checkpoints, accelerate/DeepSpeed,
logging) with a small subclass each (:class:`vadr1_lib.training.sft.VideoSFTTrainer`,
:class:`vadr1_lib.training.grpo.VideoGRPOTrainer`). What they have in common lives here
once: the run settings every trainer takes from the profile (``train`` section: precision
and memory; the stage's own section: batch, schedule, steps), how a stage resumes from its
newest checkpoint and saves its result. How a finished stage is recognised later is
:class:`vadr1_lib.stage_marker.StageMarker`.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from vadr1_lib.config import Profile, require_choice
from vadr1_lib.model import modeling
from vadr1_lib.progress import TextProgress

CACHE_BYTES = 1 << 30  # decoded clips / processed examples kept in memory across epochs


class BoundedCache:
    """``load(key)`` results kept while their ``nbytes`` fit in a byte budget (oldest dropped first).

    Decoding and processing give the same result every epoch, so small datasets pay for
    them once; a real-scale dataset simply streams.
    """

    def __init__(self, load: Callable[[Any], Any], nbytes: Callable[[Any], int], max_bytes: int = CACHE_BYTES) -> None:
        self._load = load
        self._nbytes = nbytes
        self._max_bytes = max_bytes
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._bytes = 0

    def __call__(self, key: Any) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._load(key)
        size = self._nbytes(value)
        if size <= self._max_bytes:
            self._items[key] = value
            self._bytes += size
            while self._bytes > self._max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= self._nbytes(dropped)
        return value


def mixed_precision_flags(profile: Profile) -> dict[str, bool]:
    """``bf16`` / ``fp16`` for the trainer from ``train.mixed_precision``.

    Passed on as asked, wherever the run is: bf16 autocasts on a CPU too, and a GPU
    without bf16 (a T4) then fails at once with transformers' own message instead of
    silently training in fp32. fp16 takes effect on a GPU only (accelerate enables its
    autocast and gradient scaler there; on a CPU the fp16 weights run without them).
    """
    precision = require_choice("train.mixed_precision", profile.train.mixed_precision)
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def trainer_arguments(profile: Profile, output_dir: Path, section: Any) -> dict[str, Any]:
    """The trainer settings of a stage: its own ``section`` (``profile.sft`` or
    ``profile.grpo``: batch, schedule, steps, seeds) and what both stages share (``train``:
    precision and memory; ``launch``: device and trackers)."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=section.per_device_train_batch_size,
        gradient_accumulation_steps=section.gradient_accumulation_steps,
        learning_rate=section.learning_rate,
        num_train_epochs=section.num_train_epochs,
        max_steps=section.max_steps,
        lr_scheduler_type=section.lr_scheduler_type,
        weight_decay=section.weight_decay,
        max_grad_norm=section.max_grad_norm,
        activation_checkpointing=profile.train.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        **mixed_precision_flags(profile),
        logging_steps=section.logging_steps,
        save_steps=section.save_steps,
        save_total_limit=2,
        logging_nan_inf_filter=False,  # a NaN loss must reach StopsOnDivergence, not be logged as earlier ones' mean
        seed=section.seed,
        data_seed=section.seed,
        report_to=profile.launch.report_to or "none",
        run_name=f"{profile.name}/{Path(output_dir).parent.name}",  # e.g. full-4xa100/ava-grpo
        remove_unused_columns=False,  # the video path column must reach the collator / rewards
        use_cpu=modeling.pick_device(profile).type == "cpu",
        dataloader_num_workers=0,
        # The saved notebook keeps a tqdm widget's first state ("0%"); TrainerProgress
        # prints text lines instead (see vadr1_lib.progress).
        disable_tqdm=True,
    )


def train_and_save(trainer: Any, processor: Any, output_dir: Path, checkpoints: Path) -> tuple[float, str | None]:
    """Train (resuming from the newest checkpoint if there is one), then save the model or
    adapter and the processor; returns the training seconds and the checkpoint resumed from."""
    from transformers.trainer_utils import get_last_checkpoint

    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    log_beside_checkpoints(trainer, output_dir / "logs")
    print_progress_as_text(trainer, Path(output_dir).name)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(output_dir))
    return seconds, resume


class TrainingDiverged(RuntimeError):
    """A training step's loss or gradient norm was NaN or infinite (:class:`StopsOnDivergence`)."""


class StopsOnDivergence:
    """Mixed into both trainers (before TRL's class): a step whose loss or gradient norm is
    NaN or infinite stops training right there, with :class:`TrainingDiverged` naming the
    step, before that step is logged or saved. So the stage is not marked finished, and its
    newest checkpoint stays the last step whose loss and gradient were finite, the one a
    rerun resumes from. Only ``_maybe_log_save_evaluate`` changes (the trainer calls it
    after every optimizer step, on every process, before it logs or saves).

    Why: transformers trains on through a NaN, and its ``logging_nan_inf_filter`` logs the
    mean of earlier losses in its place (a diverging ci-profile SFT logged loss 0.0 beside a
    NaN gradient norm, then saved a NaN model as a finished stage); ``trainer_arguments``
    turns that filter off so the loss seen here is the loss computed. Every process takes
    the same decision (the flags are summed over processes), so a multi-process run stops
    on every rank instead of leaving the others waiting in the next collective. An infinite
    gradient norm that a loss scaler (fp16) found is not divergence: the scaler skips that
    step and lowers its scale.
    """

    def _maybe_log_save_evaluate(self, tr_loss: Any, grad_norm: Any, *args: Any, **kwargs: Any) -> None:
        skipped = self.accelerator.optimizer_step_was_skipped
        flags = torch.tensor([float(not bool(torch.isfinite(tr_loss).all())),
                              float(grad_norm is not None and not skipped and not math.isfinite(float(grad_norm)))],
                             device=tr_loss.device)
        loss_bad, grad_bad = (bool(flag) for flag in self.accelerator.reduce(flags, reduction="sum"))
        if loss_bad or grad_bad:
            raise TrainingDiverged(self._divergence_report(loss_bad, grad_bad, grad_norm))
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _divergence_report(self, loss_bad: bool, grad_bad: bool, grad_norm: Any) -> str:
        from transformers.trainer_utils import get_last_checkpoint

        step, start = self.state.global_step, self._initial_global_step
        what = " and the ".join(name for name, bad in (("loss", loss_bad), (f"gradient norm ({float(grad_norm):g})", grad_bad))
                                if bad)
        newest = get_last_checkpoint(self.args.output_dir) if Path(self.args.output_dir).is_dir() else None
        kept = (f"its newest checkpoint, {Path(newest).name}, is the last good step and what a rerun with these "
                "settings resumes from" if newest else "no checkpoint was saved before it")
        began = f"resumed at step {start}" if start else "started at step 0"
        return (f"{self.args.run_name} diverged at step {step} of {self.state.max_steps}: the {what} "
                f"{'are' if loss_bad and grad_bad else 'is'} not finite "
                f"(this run {began}). Stopped before saving anything of step {step}, so the stage is not marked "
                f"finished; {kept}. Lower the learning rate (new settings start the stage over).")


class RestoresCheckpointWeights:
    """Mixed into both trainers (before TRL's class): a resumed run restores the weights of
    its checkpoint. Only ``_load_from_checkpoint`` changes."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        # Why: transformers 5.24's Trainer reads a checkpoint's tensors under the names they
        # were saved with, but save_pretrained writes Qwen2.5-VL's original names (visual.*,
        # model.layers.*) while the loaded model uses new ones (model.visual.*,
        # model.language_model.*). No tensor matched (strict=False hid it behind a warning),
        # so a requeued run went on from the *base* weights with the checkpoint's step count.
        # from_pretrained maps the names. Adapters and FSDP checkpoints keep the stock path.
        model = model if model is not None else self.model
        if modeling.is_adapter(resume_from_checkpoint) or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        restored = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
        model.load_state_dict(restored.state_dict(), strict=True)
        return None


def print_progress_as_text(trainer: Any, label: str) -> None:
    """Replace transformers' printing of every log dict (what it does with tqdm off, here
    each step) by a :class:`TrainerProgress` line every few seconds."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(TrainerProgress(label))


class TrainerProgress(TrainerCallback):
    """The training loop's progress as text lines (:class:`vadr1_lib.progress.TextProgress`),
    with the newest logged loss or reward, printed by the main process only."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.progress: TextProgress | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.progress = TextProgress(state.max_steps, self.label, "step", start_at=state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.update(state.global_step - self.progress.done, note=self._latest(state))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.close(note=self._latest(state))

    @staticmethod
    def _latest(state: Any) -> str:
        logged = next((h for h in reversed(state.log_history) if "loss" in h or "reward" in h), None)
        if logged is None:
            return ""
        return ", ".join(f"{key} {logged[key]:.4g}" for key in ("loss", "reward") if key in logged)


def log_beside_checkpoints(trainer: Any, logs: Path) -> None:
    """Send the trackers' files to ``<stage>/logs`` (TensorBoard would otherwise write into
    the checkpoint folder, Weights & Biases into the working directory). A resumed run
    appends to the same place, so one TensorBoard view shows a requeued job as one curve."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(logs)
    if "wandb" in trainer.args.report_to:
        os.environ.setdefault("WANDB_DIR", str(logs))
