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


def inside_distributed_launch() -> bool:
    """True in a process started by ``accelerate launch`` / torchrun (they set these)."""
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


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


def run(command: list[str]) -> int:
    """Run a launch command in the foreground, streaming its output."""
    print(f"$ {format_command(command)}", flush=True)
    return subprocess.call(command, cwd=paths.PROJECT_ROOT)
