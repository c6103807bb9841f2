"""Pre-flight: every stage of a GPU profile, as that profile configures it, on a laptop.

``python -m vadr1_lib preflight --profile full-4xa100`` is what a researcher runs before
renting GPUs. It runs SFT -> GRPO (with AVA when the profile uses it) -> inference ->
evaluation with the profile's own settings (mode, LoRA and 4-bit quantization, schedules,
frame and pixel budget, rewards, decoding, evaluation) through the same stage functions,
``from_pretrained`` calls and ``accelerate launch`` command as the real run. Only what a
laptop cannot have is substituted, and each substitution is printed:

- **the model**: a tiny Qwen2.5-VL in the Hub's shape (the full 151,665-token Qwen2.5
  vocabulary with 151,936 embedding rows, the Hub's chat template, the tokenizer and
  processor files a downloaded checkpoint has), saved in a folder named like the Hub id;
- **the data**: a handful of real rows of the release's annotation files, with stand-in
  clips (CCTV footage) written at the paths those rows point to after path remapping,
  so the release's loaders, path rules and label handling all run;
- **the length of training**: 2 optimizer steps per stage, with a checkpoint saved after
  each (saving, ZeRO's included, is a classic late failure);
- **the hardware**, where there is no GPU: the CPU, and 2 processes (gloo) instead of the
  profile's GPU count. DeepSpeed runs when it is installed; where it is not, the same
  command runs with DeepSpeed swapped out of the accelerate config, and the output says so.

Everything is written under one scratch folder (default ``runs/preflight/<profile>/``);
the download caches every command shares (the footage, the tokenizer's merge table,
WordNet) are used as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vadr1_lib import config, paths
from vadr1_lib.cluster import launch

STEPS = 2
SFT_ROWS_PER_VERDICT = 2  # per split: SFT-train and the stand-in test split
RL_ROWS_PER_VERDICT = 2
MAX_STAND_IN_FRAMES = 400  # rows of longer videos are passed over: their clips take longer to write
STAND_IN_FPS = 30.0
STAND_IN_SIZE = (320, 240)  # width, height: under the profiles' pixel cap, so the processor resizes as on real clips
RL_STAND_IN_FRAMES = 300
CPU_PROCESSES = 2
MACHINES_HOST = "127.0.0.1"  # the main machine's address when --machines runs them all here

# A tiny model: every part of Qwen2.5-VL at the smallest sizes that keep its structure.
# The language model's projections take at least 64 inputs, bitsandbytes' 4-bit block size
# (its CPU inference kernel cannot pack a narrower layer); tokens_per_second 2 is the Hub
# checkpoints' value.
TINY_SIZES = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 128,
              "vision_hidden_size": 32, "vision_depth": 1, "vision_heads": 2, "vision_intermediate_size": 64,
              "tokens_per_second": 2, "vocabulary": "full"}


class PreflightError(RuntimeError):
    """Preflight cannot start (no release rows, a CPU profile)."""


@dataclass
class StageOutcome:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class PreflightReport:
    profile: str
    scratch: Path
    substitutions: list[str]
    stages: list[StageOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.stages) and all(stage.ok for stage in self.stages)

    def format(self) -> str:
        lines = [f"preflight of profile {self.profile!r} in {self.scratch}"]
        lines += [f"  {'stage':12s} {'result':7s} {'seconds':>8s}  detail"]
        for stage in self.stages:
            lines.append(f"  {stage.name:12s} {'ok' if stage.ok else 'FAILED':7s} {stage.seconds:8.1f}  {stage.detail}")
        lines.append(f"  {'total':12s} {'ok' if self.ok else 'FAILED':7s} {sum(s.seconds for s in self.stages):8.1f}")
        return "\n".join(lines)


def default_scratch(profile_name: str) -> Path:
    return paths.runs_dir() / "preflight" / profile_name


# ----------------------------------------------------------------------------- substitutions


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def hub_shaped_model(requested: config.Profile, target: Path) -> Path:
    """A tiny stand-in for the profile's Hub checkpoint, saved as a downloaded one is laid
    out: the full vocabulary, the Hub's chat template, tied or untied LM head as the real one."""
    from vadr1_lib.cluster.memory import KNOWN_CONFIGS
    from vadr1_lib.model import modeling

    tied = KNOWN_CONFIGS.get(requested.model.name_or_path, {}).get("tie_word_embeddings", True)
    tiny = config.load_profile(requested.name, [*requested.overrides, "model.name_or_path=tiny",
                                                f"model.tiny.tie_word_embeddings={json.dumps(tied)}",
                                                *(f"model.tiny.{key}={json.dumps(value)}" for key, value in TINY_SIZES.items())])
    built = modeling.tiny_model_info(target)
    if built is None or built.get("identity") != modeling.tiny_model_identity(tiny.model, []):
        modeling.build_tiny_model(tiny, target, [])
    return target


def _pick_rows(rows: list[dict[str, Any]], is_normal: Callable[[dict[str, Any]], bool], per_verdict: int,
               skip: int = 0) -> list[dict[str, Any]]:
    picked = []
    for verdict in (False, True):
        matching = [row for row in rows if is_normal(row) == verdict]
        chosen = matching[skip * per_verdict:(skip + 1) * per_verdict]
        if len(chosen) < per_verdict:
            raise PreflightError(f"the release file has too few usable {'normal' if verdict else 'abnormal'} rows")
        picked += chosen
    return picked


def release_rows(release_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """A handful of real rows per split: SFT-train, RL, and SFT rows standing in for the test split."""
    sft_file, rl_file = release_dir / paths.RELEASE_SFT_FILE, release_dir / paths.RELEASE_RL_FILE
    missing = [str(path) for path in (sft_file, rl_file) if not path.is_file()]
    if missing:
        raise PreflightError(f"preflight runs on real release rows, and {', '.join(missing)} is missing; "
                             "put the release's annotation files there or set VADR1_RELEASE_DIR")
    sft_rows = [json.loads(line) for line in sft_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    short = [row for row in sft_rows if row.get("total_frames", MAX_STAND_IN_FRAMES + 1) <= MAX_STAND_IN_FRAMES]
    rl_rows = [json.loads(line) for line in rl_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    sft_normal = lambda row: row["anomaly_type"].strip() == "Normal"  # noqa: E731
    return {
        paths.RELEASE_SFT_FILE: _pick_rows(short, sft_normal, SFT_ROWS_PER_VERDICT),
        # the release's test rows are not public here: other SFT rows stand in
        paths.RELEASE_TEST_FILE: _pick_rows(short, sft_normal, SFT_ROWS_PER_VERDICT, skip=1),
        paths.RELEASE_RL_FILE: _pick_rows(rl_rows, lambda row: row["solution"] == "Normal", RL_ROWS_PER_VERDICT),
    }


def stand_in_data(rows_by_file: dict[str, list[dict[str, Any]]], release_dir: Path, video_root: Path) -> None:
    """Write the rows as release files and a stand-in clip at every path they point to."""
    import cv2
    import numpy as np

    from vadr1_lib.data import dataset, footage, video

    source = footage.ensure_vtest()
    info = video.read_video_info(source)
    needed = max(MAX_STAND_IN_FRAMES, RL_STAND_IN_FRAMES)
    frames = np.stack([cv2.resize(frame, STAND_IN_SIZE, interpolation=cv2.INTER_AREA)
                       for first in range(0, needed, 64)
                       for frame in video.load_frames(source, [i % info.num_frames for i in range(first, min(first + 64, needed))])])
    release_dir.mkdir(parents=True, exist_ok=True)
    for position, (name, rows) in enumerate(rows_by_file.items()):
        (release_dir / name).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        for index, row in enumerate(rows):
            path = dataset.remap_video_path(row["path"], video_root)
            if path.is_file():
                continue
            count = row.get("total_frames", RL_STAND_IN_FRAMES)
            shift = (7 * position + index) * 13 % (needed - count + 1)  # clips differ from each other
            video.write_video(frames[shift:shift + count], path, fps=STAND_IN_FPS)


def _accelerate_config_without_deepspeed(profile: config.Profile, stage: str, folder: Path) -> tuple[Path, str | None]:
    """The stage's accelerate config, with DeepSpeed swapped out when it is not installed;
    and what was changed, if anything."""
    original = launch.accelerate_config_path(profile, stage)
    settings = yaml.safe_load(original.read_text()) or {}
    if settings.get("distributed_type") != "DEEPSPEED" or _has_deepspeed():
        return original, None
    # MULTI_GPU, even on a CPU: accelerate launch starts several processes on one machine
    # only through torchrun, which it uses for MULTI_GPU (and DeepSpeed); with use_cpu it
    # starts one and expects MPI. The processes still run on the CPU with gloo, because the
    # trainer's arguments say use_cpu.
    settings.pop("deepspeed_config", None)
    settings["distributed_type"] = "MULTI_GPU"
    target = folder / original.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(settings, sort_keys=True))
    return target, (f"DeepSpeed is not installed (pip install -e '.[cluster]'): {original.name} runs as plain data "
                    "parallel without it, through the same command")


def substitutions(profile: config.Profile, scratch: Path, machines: int = 1) -> tuple[list[str], list[str]]:
    """The overrides that turn the profile into its pre-flight, and one line of explanation
    each. ``machines`` > 1: the multi-process stages run across that many machines, all on
    this host's CPU, one process each."""
    gpus = 0 if machines > 1 else _cuda_devices()
    overrides = [f"model.name_or_path={scratch / 'hub' / profile.model.name_or_path}",
                 f"data.release_dir={scratch / 'release'}", f"data.video_root={scratch / 'videos'}",
                 f"sft.max_steps={STEPS}", f"grpo.max_steps={STEPS}", "sft.save_steps=1", "grpo.save_steps=1"]
    notes = [f"model: a tiny Hub-shaped {profile.model.name_or_path} (full Qwen2.5 vocabulary, Hub chat template) "
             f"in {scratch / 'hub'}",
             f"data: {SFT_ROWS_PER_VERDICT} normal + {SFT_ROWS_PER_VERDICT} abnormal real rows for SFT and for test, "
             f"{RL_ROWS_PER_VERDICT} + {RL_ROWS_PER_VERDICT} for RL, stand-in clips at their remapped paths",
             f"steps: {STEPS} per training stage, a checkpoint after each"]
    if not gpus:
        overrides.append("launch.device=cpu")
        notes.append("device: cpu (no GPU here)")
        if profile.model.dtype == "float16":
            overrides.append("model.dtype=float32")
            notes.append("dtype: float32 instead of float16 (a CPU emulates fp16 arithmetic: GRPO took 3.6x as long; "
                         "and accelerate applies fp16 autocast and loss scaling on a GPU only)")
    if machines > 1 and profile.launch.num_processes <= 1:
        raise PreflightError(f"profile {profile.name!r} trains in one process; --machines runs the stages of a "
                             "multi-process profile (full-4xa100) across machines")
    if profile.launch.num_processes > 1:
        if machines > 1:
            processes = 1
            overrides += [f"launch.num_machines={machines}", f"launch.main_process_port={_free_port()}"]
            notes.append(f"machines: {machines} on this host ({MACHINES_HOST}, CPU, gloo), one process each instead "
                         f"of {profile.launch.num_processes} GPUs, each stage started on every machine as srun starts "
                         f"one task per node (its node's SLURM_NODEID); their logs in {scratch / 'machines'}")
        else:
            processes = min(gpus, profile.launch.num_processes) if gpus else CPU_PROCESSES
            notes.append(f"processes: {processes} instead of {profile.launch.num_processes}"
                         + ("" if gpus else " (CPU, gloo)"))
        overrides.append(f"launch.num_processes={processes}")
        if not gpus:
            overrides.append(f"launch.torch_threads={max(1, (os.cpu_count() or 1) // (processes * machines))}")
        for stage, key in launch.STAGE_CONFIG_FIELD.items():
            path, change = _accelerate_config_without_deepspeed(profile, stage, scratch / "accelerate")
            if change:
                overrides.append(f"launch.{key}={path}")
                notes.append(f"{stage}: {change}")
    return overrides, notes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((MACHINES_HOST, 0))
        return probe.getsockname()[1]


def _has_deepspeed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


# ----------------------------------------------------------------------------- the run


@contextlib.contextmanager
def _runs_under(folder: Path) -> Iterator[None]:
    """Point ``VADR1_RUNS`` at the scratch folder (the launched processes inherit it)."""
    saved = os.environ.get("VADR1_RUNS")
    os.environ["VADR1_RUNS"] = str(folder)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("VADR1_RUNS", None)
        else:
            os.environ["VADR1_RUNS"] = saved


def _timed(report: PreflightReport, name: str, work: Callable[[], str], log: Callable[[str], None]) -> bool:
    log(f"--> {name}")
    start = time.perf_counter()
    try:
        detail = work()
        ok = True
    except Exception as exc:  # a stage's failure is the finding: report it and stop
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log(traceback.format_exc())
        ok = False
    report.stages.append(StageOutcome(name, ok, time.perf_counter() - start, detail))
    log(f"    {name}: {'ok' if ok else 'FAILED'} in {report.stages[-1].seconds:.1f} s  {detail}")
    return ok


def run(profile_name: str, overrides: list[str] | None = None, *, scratch: Path | None = None, machines: int = 1,
        log: Callable[[str], None] = print) -> PreflightReport:
    """Pre-flight the profile (module docstring) and report each stage's outcome and time;
    with ``machines`` > 1 its training stages run across that many machines on this host."""
    from vadr1_lib import stages
    from vadr1_lib.evaluation import scores
    from vadr1_lib.model import modeling
    from vadr1_lib.stage_marker import StageMarker

    requested = config.load_profile(profile_name, overrides)
    if requested.data.dataset != "release" or requested.model.name_or_path == "tiny":
        raise PreflightError(f"profile {profile_name!r} already runs on this machine's data and model; "
                             "preflight is for the profiles that train a Hub checkpoint on the release")
    if machines < 1:
        raise PreflightError(f"--machines must be at least 1, got {machines}")
    scratch = Path(scratch or default_scratch(profile_name)).resolve()
    extra, notes = substitutions(requested, scratch, machines)
    profile = config.load_profile(profile_name, [*(overrides or []), *extra])
    modeling.configure_threads(profile)
    report = PreflightReport(profile_name, scratch, notes)
    log(f"preflight of {profile_name!r}: {requested.description.strip()}")
    for note in notes:
        log(f"  substituted {note}")

    with _runs_under(scratch / "runs"):
        def prepare() -> str:
            model_dir = hub_shaped_model(requested, Path(profile.model.name_or_path))
            rows = release_rows(Path(requested.data.release_dir) if requested.data.release_dir else paths.release_dir())
            stand_in_data(rows, scratch / "release", scratch / "videos")
            return f"{model_dir.name}: {modeling.tiny_model_info(model_dir)['parameters']:,} parameters; " + ", ".join(
                f"{len(r)} rows of {name}" for name, r in rows.items())

        where = f" on {machines} machines" if machines > 1 else ""

        def on_machines(stage: str, cli_args: list[str]) -> None:
            """Start the stage's command on every machine, as srun would: each machine's
            ``accelerate launch`` comes from the same command builder as on a cluster."""
            command = [sys.executable, "-m", "vadr1_lib", stage, "--profile", profile_name, *cli_args,
                       *(f"--set={o}" for o in profile.overrides)]
            log(f"    on each of {machines} machines: {launch.format_command(command)}")
            folder = scratch / "machines" / stage
            codes = launch.run_as_machines_here(command, machines, folder, {"CUDA_VISIBLE_DEVICES": ""})
            for rank, code in enumerate(codes):
                log(f"    machine {rank}: exit status {code}, log {folder / f'machine-{rank}.log'}")
            if any(codes):
                raise launch.LaunchFailed(f"{stage} failed on machine(s) "
                                          f"{', '.join(str(r) for r, c in enumerate(codes) if c)}; see their logs")

        def train_sft() -> str:
            if machines > 1:
                on_machines("sft", [])
            marker = StageMarker(stages.ensure_sft(profile)).read()
            return (f"{marker['global_step']} steps ({profile.train.mode}){where}, "
                    f"{marker['train_seconds']:.0f} s training")

        use_ava = profile.grpo.use_ava

        def train_grpo() -> str:
            if machines > 1:
                on_machines("grpo", [] if use_ava else ["--no-ava"])
            marker = StageMarker(stages.ensure_grpo(profile, use_ava=use_ava)).read()
            ava = "" if not use_ava else f", AVA re-queries {sum(call['queries'] for call in marker['ava_history'])}"
            return (f"{marker['global_step']} steps{where}, reward {marker['reward_curves'].get('reward', [None])[-1]}"
                    f"{ava}")

        predictions: dict[str, Path] = {}

        def infer() -> str:
            model = stages.ensure_grpo(profile, use_ava=use_ava)
            predictions["file"] = stages.ensure_predictions(profile, "ava-grpo" if use_ava else "grpo", str(model))
            rows = [json.loads(line) for line in predictions["file"].read_text().splitlines() if line.strip()]
            sampling = (f"sampled at T={profile.eval.temperature}, top-p {profile.eval.top_p}" if profile.eval.do_sample
                        else "greedy")
            return f"{len(rows)} videos, {sum(r['new_tokens'] for r in rows)} tokens, {sampling}"

        def evaluate() -> str:
            figures = scores.evaluate_file(predictions["file"], stages.test_records(profile),
                                                           bootstrap_resamples=profile.eval.bootstrap_resamples)
            meteor = figures["text"]["meteor"]  # None when every prediction was empty
            skipped = scores.skipped_empty_note(figures)
            return (f"{figures['videos']} videos: accuracy {figures['detection']['accuracy']:.2f}, "
                    f"mIoU {figures['temporal']['miou']:.2f}, METEOR " + ("-" if meteor is None else f"{meteor:.3f}")
                    + (f"; {skipped}" if skipped else "")
                    + " (an untrained model: the figures only show that every metric ran)")

        for name, work in (("data+model", prepare), ("sft", train_sft), ("grpo+ava" if use_ava else "grpo", train_grpo),
                           ("infer", infer), ("evaluate", evaluate)):
            if not _timed(report, name, work, log):
                break
    return report
