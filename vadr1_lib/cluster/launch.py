"""Multi-process stages: the same CLI command, started by ``accelerate launch``.

A profile with ``launch.num_processes > 1`` (the paper's 4x A100) runs its training stages
as ``accelerate launch --config_file configs/accelerate/<zero2|zero3>.yaml -m vadr1_lib <stage>
--profile P ...``. The CLI relaunches itself that way when it is not already inside such a
launch, and the notebooks build and run the same command (or print it in dry-run mode), so
there is one way to start a stage at every scale.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from vadr1_lib import paths
from vadr1_lib.config import Profile

STAGE_CONFIG_FIELD = {"sft": "accelerate_config_sft", "grpo": "accelerate_config_grpo"}


LAUNCHED_ENV = "VADR1_LAUNCHED"  # set for the processes a launch command starts


def inside_distributed_launch() -> bool:
    """True in a process started by :func:`run` (or by torchrun, which sets ``LOCAL_RANK``).

    Our own marker, not only ``LOCAL_RANK``: a launcher that does not set it would
    otherwise have every process launch the stage again, without end.
    """
    return os.environ.get(LAUNCHED_ENV) == "1" or "LOCAL_RANK" in os.environ


def prepare_launched_process(profile: Profile) -> None:
    """Checks and set-up in each process of a multi-process stage, before any training code.

    - The launcher must have started the profile's number of processes: a config that
      starts fewer would train on a fraction of the batch, silently.
    - Under DeepSpeed on a CPU (``preflight``), DeepSpeed's communication (gloo) starts now.
      On a GPU accelerate starts it when the training arguments are made; with ``use_cpu`` it
      does not, and ``deepspeed.initialize`` starts it only when the trainer is prepared: too
      late for ZeRO-3, under which TRL loads GRPO's reference model partitioned
      (``deepspeed.zero.Init``) while the trainer is being built.
    """
    if os.environ.get(LAUNCHED_ENV) != "1":
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != profile.launch.num_processes:
        raise RuntimeError(f"the launcher started {world} process(es), the profile asks for "
                           f"launch.num_processes={profile.launch.num_processes}; check the accelerate config")
    if profile.launch.device == "cpu" and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        from deepspeed import comm

        if not comm.is_initialized():
            comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def finish_launched_process() -> None:
    """End a launched process's process group before it exits: gloo's threads left running
    at interpreter exit abort the process (SIGABRT) now and then, and the launch then fails
    after the work was done."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def exit_launched_process(code: int) -> None:
    """Leave a launched process without the interpreter's teardown. Even with the process
    group destroyed, a C++ thread (gloo's, DeepSpeed's) destroyed at exit now and then
    aborted a rank ("terminate called without an active exception", SIGABRT) after the
    stage had finished and saved, and the launcher then reported the whole stage failed
    (seen once in a CI run of the full-4xa100 preflight). Output is flushed first."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def needs_launcher(profile: Profile) -> bool:
    return profile.launch.num_processes > 1 and not inside_distributed_launch()


def accelerate_config_path(profile: Profile, stage: str) -> Path:
    """The accelerate/DeepSpeed config a multi-process ``stage`` (sft, grpo) runs under."""
    config_name = getattr(profile.launch, STAGE_CONFIG_FIELD[stage])
    if not config_name:
        raise ValueError(f"profile {profile.name!r} asks for {profile.launch.num_processes} processes but sets no "
                         f"launch.{STAGE_CONFIG_FIELD[stage]}")
    config_file = paths.CONFIGS_DIR / "accelerate" / config_name
    if not config_file.is_file():
        raise FileNotFoundError(f"accelerate config {config_file} not found")
    return config_file


def accelerate_command(profile: Profile, stage: str, stage_args: list[str]) -> list[str]:
    """The exact command that runs ``stage`` on ``launch.num_processes`` processes."""
    config_file = accelerate_config_path(profile, stage)
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "--num_processes", str(profile.launch.num_processes), "-m", "vadr1_lib", stage, *stage_args]


def format_command(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


class LaunchFailed(RuntimeError):
    """A stage started under ``accelerate launch`` failed; its processes printed why."""


def run(command: list[str]) -> int:
    """Run a launch command in the foreground, streaming its output."""
    print(f"$ {format_command(command)}", flush=True)
    return subprocess.call(command, cwd=paths.PROJECT_ROOT, env={**os.environ, LAUNCHED_ENV: "1"})
