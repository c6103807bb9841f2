"""The pipeline's stages, each built once and reused: dataset -> base model -> SFT -> GRPO.

Every notebook must also run on its own, so a notebook that needs an earlier stage's
output calls ``ensure_*`` here: it returns the cached result when it exists and builds it
(through the same library code the earlier notebook uses) when it does not. The ordered
``make run`` therefore pays for each stage once. A cached result carries a fingerprint of
the settings it was made with; other settings rebuild it instead of silently reusing it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vadr1_lib import paths
from vadr1_lib.cluster import launch
from vadr1_lib.config import Profile
from vadr1_lib.data import corpus, dataset
from vadr1_lib.model import modeling
from vadr1_lib.stage_marker import StageMarker


@dataclass(frozen=True)
class Splits:
    """The release-format files of a profile's dataset and where their videos are."""

    sft_train: Path
    rl: Path
    val: Path | None  # None: the dataset has no validation split (the release)
    test: Path
    video_root: Path | None  # None: paths resolve against each file's folder

    def file(self, split: str) -> Path:
        """The file of ``split`` ("sft_train", "rl", "val" or "test")."""
        path = getattr(self, split, None) if split in ("sft_train", "rl", "val", "test") else None
        if path is None:
            raise ValueError(f"this dataset has no {split!r} split")
        return path


def data_splits(profile: Profile) -> Splits:
    """Vad-Reasoning-Mini (built when missing) or the real release (``data.dataset: release``)."""
    if profile.data.dataset == "mini":
        from vadr1_lib.data import mini

        built = mini.ensure_dataset(profile)
        return Splits(built.sft_train, built.rl, built.val, built.test, None)
    if profile.data.dataset == "release":
        folder = Path(profile.data.release_dir) if profile.data.release_dir else paths.release_dir()
        root = Path(profile.data.video_root) if profile.data.video_root else None
        if root is not None and not root.is_absolute():
            root = paths.data_dir() / root  # beside the other data, wherever VADR1_DATA puts it
        return Splits(folder / paths.RELEASE_SFT_FILE, folder / paths.RELEASE_RL_FILE, None,
                      folder / paths.RELEASE_TEST_FILE, root)
    raise ValueError(f"data.dataset must be 'mini' or 'release', got {profile.data.dataset!r}")


def pretraining_corpus(profile: Profile) -> list[corpus.Reply]:
    """The tiny model's pretraining texts (:mod:`vadr1_lib.data.corpus`), none of them the text
    written for a clip of the profile's dataset, nor an abnormal clip's answer (any split: a
    test answer is never read before the test)."""
    if profile.pretrain.corpus_texts <= 0:
        return []
    splits = data_splits(profile)
    records = [record for split in (splits.sft_train, splits.val, splits.test) if split is not None and split.is_file()
               for record in dataset.load_sft(split, video_root=splits.video_root)]
    written = [record.target_text for record in records] + [record.answer for record in records if record.is_abnormal]
    return corpus.profile_corpus(profile, written)


def ensure_tiny_init(profile: Profile) -> str:
    """The tiny model as built, random weights, in ``runs/<profile>/tiny-init/`` (reused when
    its sizes and vocabulary are the same).

    Its vocabulary is Qwen2.5's BPE restricted to the texts it will read and write: the
    profile's training targets (the dataset is built first when missing), the prompts and
    the pretraining corpus. Test answers stay out so the vocabulary does not peek.
    """
    return _tiny_init(profile, pretraining_corpus(profile))


def _tiny_init(profile: Profile, replies: list[corpus.Reply]) -> str:
    splits = data_splits(profile)
    texts = [record.target_text for record in dataset.load_sft(splits.sft_train, video_root=splits.video_root)]
    texts += [reply.text for reply in replies]
    identity = modeling.tiny_model_identity(profile.model, texts)
    for out in (profile.tiny_init_dir, _profile_own(profile, profile.tiny_init_dir)):
        info = modeling.tiny_model_info(out)
        if info is not None and info.get("identity") == identity and (out / "model.safetensors").is_file():
            return str(out)
    print(f"building the tiny Qwen2.5-VL in {profile.tiny_init_dir} (its vocabulary from {len(set(texts))} distinct "
          "texts: the training targets and the pretraining corpus; and the prompts) ...", flush=True)
    modeling.build_tiny_model(profile, profile.tiny_init_dir, texts)
    return str(profile.tiny_init_dir)


def ensure_base_model(profile: Profile) -> str:
    """The profile's starting checkpoint: a Hub id / folder, or the tiny model built and
    pretrained here (``runs/<profile>/base-model/``; the random one when ``pretrain.corpus_texts``
    is 0)."""
    if profile.model.name_or_path != "tiny":
        return profile.model.name_or_path
    from vadr1_lib.training import pretrain

    texts = pretraining_corpus(profile)  # built once: it makes the vocabulary and is what the stage reads
    init = _tiny_init(profile, texts)
    if not texts:
        return init
    out = pretrain.stage_dir(profile)
    fingerprint = pretrain.fingerprint(profile, init, texts)

    def train() -> dict[str, Any]:
        print(f"pretraining the tiny model on {len(texts)} texts ({profile.pretrain.corpus} corpus) ...", flush=True)
        return pretrain.train(profile, init, texts, output_dir=out).record(profile, init, fingerprint)

    return str(_ensure_stage(profile, None, "pretraining", out, fingerprint, [], train, dry_run=False))


def _profile_own(profile: Profile, folder: Path) -> Path:
    """Where ``folder`` of a variant lies in the profile's own run folder (itself without a
    variant). A variant's stage whose settings equal the profile's own is reused from there:
    an exercise that changes GRPO retrains GRPO, not SFT and the base model too."""
    return paths.runs_dir() / profile.name / folder.relative_to(profile.run_dir) if profile.variant else folder


def launch_command(profile: Profile, stage: str, cli_args: list[str] | None = None) -> list[str] | None:
    """The exact command that runs ``stage`` ("sft", or "grpo" with ``cli_args`` such as
    ``["--no-ava"]``) for a multi-process profile: this profile and its overrides, under
    ``accelerate launch``. None when the profile trains in this process."""
    if not launch.needs_launcher(profile):
        return None
    return launch.accelerate_command(profile, stage, _stage_arguments(profile, cli_args or []))


def _stage_arguments(profile: Profile, cli_args: list[str]) -> list[str]:
    """The CLI arguments that run a stage of this profile, its variant and its overrides in another process."""
    variant = [f"--variant={profile.variant}"] if profile.variant else []
    return ["--profile", profile.name, *variant, *cli_args, *[f"--set={o}" for o in profile.overrides]]


def _finished(profile: Profile, out: Path, fingerprint: str) -> Path | None:
    """The finished result with ``fingerprint``: ``out`` itself, or the profile's own folder
    when ``out`` belongs to a variant (:func:`_profile_own`); None when neither is."""
    own = _profile_own(profile, out)
    return next((folder for folder in dict.fromkeys((out, own)) if StageMarker(folder).finished_with(fingerprint)), None)


def _ensure_stage(profile: Profile, stage: str | None, label: str, out: Path, fingerprint: str, cli_args: list[str],
                  train: Callable[[], dict[str, Any]], dry_run: bool) -> Path:
    """Shared life cycle of a training stage: reuse a finished result with the same
    fingerprint; otherwise run ``python -m vadr1_lib <stage>`` under ``accelerate launch``
    (multi-process profiles; ``stage`` None: always in this process) or train in this
    process, discarding a stale partial result first, and mark the result finished with the
    record ``train`` returns. ``dry_run`` prints what would run instead."""
    marker = StageMarker(out)
    if (finished := _finished(profile, out, fingerprint)) is not None:
        if finished != out:
            print(f"{label}: the profile's own result has the same settings; using {finished}")
        return finished
    command = launch_command(profile, stage, cli_args) if stage is not None else None
    if command is not None:
        if dry_run:
            print(launch.format_command(command))
        elif (code := launch.run(command)) != 0:
            raise launch.LaunchFailed(f"{stage} under accelerate failed (exit status {code}): "
                                      f"{launch.format_command(command)}")
        return out
    if dry_run:
        print(f"would train {label} in this process into {out}")
        return out
    marker.begin(fingerprint)
    record = train()
    if launch.is_main_process():
        if modeling.is_adapter(out):  # so that a moved run folder finds its base (modeling.adapter_base)
            record["adapter_base"] = modeling.adapter_base_record(out)
        marker.finish(record)
    return out


def ensure_sft(profile: Profile, *, dry_run: bool = False) -> Path:
    """The SFT result of the profile under ``runs/<profile>/sft/`` (trained, or resumed, when missing).

    Multi-process profiles run the ``sft`` command under ``accelerate launch``; with
    ``dry_run`` that command is printed instead of run.
    """
    from vadr1_lib.training import sft

    base = ensure_base_model(profile)
    splits = data_splits(profile)
    out = sft.stage_dir(profile)
    fingerprint = sft.fingerprint(profile, base, splits.sft_train)

    def train() -> dict[str, Any]:
        result = sft.train(profile, base, splits.sft_train, output_dir=out, video_root=splits.video_root)
        return result.record(profile, base, fingerprint)

    return _ensure_stage(profile, "sft", "SFT", out, fingerprint, [], train, dry_run)


def ensure_predictions(profile: Profile, label: str, model_path: str, *, prompt_kind: str = "p2c",
                       loaded: tuple | None = None, split: str = "test") -> Path:
    """Predictions of one model on the profile's test split (or ``split="val"``),
    ``runs/<profile>/predictions/<label>-<kind>.jsonl`` (``<label>-<kind>-val.jsonl``).

    Resumes an interrupted file; starts over when the model behind ``label`` changed.
    """
    import json

    from vadr1_lib.evaluation import inference

    splits = data_splits(profile)
    suffix = "" if split == "test" else f"-{split}"
    out = profile.run_dir / "predictions" / f"{label}-{prompt_kind}{suffix}.jsonl"
    meta = out.with_suffix(".meta.json")
    identity = {"model": modeling.model_identity(model_path), "model_config": asdict(profile.model), "eval": asdict(profile.eval),
                "video": asdict(profile.video)}
    if meta.is_file() and json.loads(meta.read_text()) != json.loads(json.dumps(identity)):
        out.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(identity, indent=2))
    limit = profile.eval.max_test_videos if profile.eval.max_test_videos > 0 else None
    inference.predict_split(model_path, splits.file(split), out, profile, prompt_kind=prompt_kind,
                            video_root=splits.video_root, limit=limit, loaded=loaded)
    return out


def test_records(profile: Profile, split: str = "test") -> list[dataset.SFTRecord]:
    """The test split's (or ``split``'s) ground truth, cut to ``eval.max_test_videos`` when that is set."""
    splits = data_splits(profile)
    records = dataset.load_sft(splits.file(split), video_root=splits.video_root)
    return records[: profile.eval.max_test_videos] if profile.eval.max_test_videos > 0 else records


def _grpo_stage(profile: Profile, start: Path, use_ava: bool) -> tuple[Path, str]:
    """Where a (AVA-)GRPO result from ``start`` goes, and the fingerprint of its settings."""
    from vadr1_lib.training import grpo

    return grpo.stage_dir(profile, use_ava=use_ava), grpo.fingerprint(profile, start, data_splits(profile).rl, use_ava=use_ava)


def ensure_grpo(profile: Profile, *, use_ava: bool, dry_run: bool = False) -> Path:
    """The (AVA-)GRPO result of the profile under ``runs/<profile>/ava-grpo/`` (``grpo/`` without
    AVA), trained from the profile's SFT result (itself built when missing).

    Multi-process profiles run the ``grpo`` command under ``accelerate launch`` (ZeRO-3
    config); with ``dry_run`` that command is printed instead of run.
    """
    from vadr1_lib.training import grpo

    start = ensure_sft(profile, dry_run=dry_run)
    splits = data_splits(profile)
    out, fingerprint = _grpo_stage(profile, start, use_ava)

    def train() -> dict[str, Any]:
        result = grpo.train(profile, start, splits.rl, use_ava=use_ava, output_dir=out, video_root=splits.video_root,
                            sft_file=splits.sft_train)
        return result.record(profile, start, fingerprint)

    return _ensure_stage(profile, "grpo", "AVA-GRPO" if use_ava else "GRPO", out, fingerprint,
                         [] if use_ava else ["--no-ava"], train, dry_run)


RL_RUNS = {"GRPO": False, "AVA-GRPO": True}  # notebook 04's two runs: name -> use_ava


def ensure_rl_runs(profile: Profile, *, dry_run: bool = False) -> dict[str, Path]:
    """GRPO and AVA-GRPO from the profile's SFT result (:func:`ensure_grpo` each), one after the
    other, or side by side with ``launch.concurrent_runs`` 2 when both are to be trained.

    Side by side, each run is its own ``python -m vadr1_lib grpo`` process with the profile's
    overrides and ``launch.torch_threads / concurrent_runs`` threads; the SFT result they both
    start from is built first, here. Why: a step of the cpu profile's 1M-parameter model keeps
    two threads only partly busy (small matrices; generation one token at a time), so on two
    cores two one-thread runs at once end sooner than two two-thread runs in turn, and the
    weights are the same (training here does not depend on the thread count;
    ``docs/measurements.md``, "Two RL runs side by side"). Each run's mean step is then measured
    under the same load, so AVA-GRPO's cost against GRPO's stays a fair ratio.
    """
    if profile.launch.concurrent_runs == 1 or dry_run:
        return {name: ensure_grpo(profile, use_ava=use_ava, dry_run=dry_run) for name, use_ava in RL_RUNS.items()}
    if launch.world_size(profile) > 1:
        raise ValueError(f"launch.concurrent_runs={profile.launch.concurrent_runs} trains runs side by side in one "
                         f"process each; this profile trains a stage on {launch.world_size(profile)} processes "
                         "(launch.num_processes x launch.num_machines), which own the machine's devices: set it to 1")
    start = ensure_sft(profile)
    to_train = {name: use_ava for name, use_ava in RL_RUNS.items() if _finished(profile, *_grpo_stage(profile, start, use_ava)) is None}
    if len(to_train) > 1:
        threads = max(1, (profile.launch.torch_threads or os.cpu_count() or 1) // profile.launch.concurrent_runs)
        commands = {name: [sys.executable, "-m", "vadr1_lib", "grpo", *_stage_arguments(profile, [] if use_ava else ["--no-ava"]),
                           f"--set=launch.torch_threads={threads}", "--set=launch.concurrent_runs=1"]
                    for name, use_ava in to_train.items()}
        print(f"training {' and '.join(commands)} side by side (launch.concurrent_runs={profile.launch.concurrent_runs}), "
              f"{threads} thread(s) each; each line below starts with its run's name", flush=True)
        codes = launch.run_side_by_side(commands, profile.run_dir / "logs")
        failed = {name: code for name, code in codes.items() if code != 0}
        if failed:
            raise launch.LaunchFailed("; ".join(f"{name} failed (exit status {code}), its output in "
                                                f"{profile.run_dir / 'logs' / f'{name}.log'}" for name, code in failed.items()))
    return {name: ensure_grpo(profile, use_ava=use_ava) for name, use_ava in RL_RUNS.items()}
