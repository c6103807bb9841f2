"""preflight: every stage of each GPU profile, as configured, on this CPU (the slow ones take
about 3 minutes each), across two machines on this host, and the substitutions it makes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vadr1_lib import config, paths
from vadr1_lib.cluster import launch, preflight

GPU_PROFILES = ["qlora-24gb", "qlora-t4-16gb", "full-4xa100"]
# Download caches every command shares (footage, the tokenizer's merge table, WordNet): not outputs.
SHARED_CACHES = ("data/downloads", "data/footage", "data/nltk_data", "data/tokenizer")
NOT_PROJECT_FILES = (".venv", ".git", ".pytest_cache", ".hypothesis", "__pycache__")


def _files(root: Path, skip: list[Path]) -> dict[str, tuple[int, int]]:
    found = {}
    for folder, names, files in os.walk(root):
        here = Path(folder)
        names[:] = [n for n in names if n not in NOT_PROJECT_FILES and here / n not in skip]
        for name in files:
            stat = (here / name).stat()
            found[str(here / name)] = (stat.st_mtime_ns, stat.st_size)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("profile_name", GPU_PROFILES)
def test_preflight_runs_every_stage_in_minutes_and_writes_only_its_scratch_folder(profile_name, release_sft_path,
                                                                                 tmp_path):
    scratch = tmp_path / "scratch"
    skip = [paths.PROJECT_ROOT / cache for cache in SHARED_CACHES]
    outputs = [paths.runs_dir(), paths.data_dir(), paths.figures_dir()]  # where a stage's files would land

    def written() -> tuple[set[str], dict[str, tuple[int, int]]]:
        """Every file of the project (names), and the output folders' files (with time and size)."""
        return set(_files(paths.PROJECT_ROOT, skip)), {k: v for root in outputs for k, v in _files(root, skip).items()}

    names_before, outputs_before = written()
    result = subprocess.run([sys.executable, "-m", "vadr1_lib", "preflight", "--profile", profile_name,
                             "--scratch", str(scratch)], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout[result.stdout.index(f"preflight of profile {profile_name!r}"):]
    stages = dict(re.findall(r"^  (\S+)\s+ok\s+([\d.]+)", table, flags=re.MULTILINE))
    assert set(stages) == {"data+model", "sft", "grpo+ava", "infer", "evaluate", "total"}, table
    assert float(stages["total"]) < 8 * 60
    names_after, outputs_after = written()
    assert names_after == names_before and outputs_after == outputs_before  # nothing written outside the scratch folder
    if config.load_profile(profile_name).launch.num_processes > 1:
        # the multi-process stages ran through the accelerate command printed, on 2 processes
        launched = [line for line in result.stdout.splitlines() if line.startswith("$ ")]
        assert len(launched) == 2 and all("accelerate.commands.launch" in line and "--num_processes 2" in line
                                          for line in launched)
        deepspeed = preflight._has_deepspeed()
        assert ("DeepSpeed is not installed" in result.stdout) is not deepspeed
    checkpoint = scratch / "runs" / profile_name / "ava-grpo"
    assert (checkpoint / "logs").is_dir()  # the profile's tracker (TensorBoard) wrote beside the checkpoints


@pytest.mark.slow
def test_two_machines_on_this_host_run_sft_and_grpo_through_the_slurm_command_builder(release_sft_path, tmp_path):
    """preflight --machines 2: each training stage started on two "machines" (127.0.0.1, one
    CPU process each) with the SLURM variables srun gives each node's task; their DeepSpeed
    launches join one world of two (gloo), each as its own machine rank. Short generations:
    what is tested is the plumbing across machines, which the one-machine run above lacks."""
    scratch = tmp_path / "scratch"
    result = subprocess.run([sys.executable, "-m", "vadr1_lib", "preflight", "--profile", "full-4xa100", "--machines", "2",
                             "--scratch", str(scratch), "--set", "grpo.max_completion_length=16",
                             "--set", "eval.max_new_tokens=16"], capture_output=True, text=True, cwd=tmp_path, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout[result.stdout.index("preflight of profile 'full-4xa100'"):]
    details = dict(re.findall(r"^  (sft|grpo\+ava)\s+ok\s+[\d.]+\s+(.*)$", table, flags=re.MULTILINE))
    assert "2 steps (full) on 2 machines" in details["sft"] and "2 steps on 2 machines" in details["grpo+ava"], table
    for stage in ("sft", "grpo"):
        for rank in (0, 1):
            log = (scratch / "machines" / stage / f"machine-{rank}.log").read_text()
            assert f"--num_processes 2 --num_machines 2 --machine_rank {rank} --main_process_ip 127.0.0.1" in log
            assert f"process {rank} of 2: machine {rank} of 2, local process 0" in log  # one world, distinct ranks


def test_without_deepspeed_the_same_command_runs_with_it_swapped_out(monkeypatch, tmp_path):
    profile = config.load_profile("full-4xa100")
    monkeypatch.setattr(preflight, "_has_deepspeed", lambda: False)
    overrides, notes = preflight.substitutions(profile, tmp_path)
    swapped = {key.split(".")[1]: Path(value) for key, _, value in (o.partition("=") for o in overrides)
               if key.startswith("launch.accelerate_config_")}
    assert set(swapped) == {"accelerate_config_sft", "accelerate_config_grpo"}
    for path in swapped.values():
        settings = yaml.safe_load(path.read_text())
        assert settings["distributed_type"] == "MULTI_GPU" and "deepspeed_config" not in settings
    assert sum("DeepSpeed is not installed" in note for note in notes) == 2
    monkeypatch.setattr(preflight, "_has_deepspeed", lambda: True)
    overrides, _ = preflight.substitutions(profile, tmp_path / "with")
    assert not any(o.startswith("launch.accelerate_config_") for o in overrides)  # the profile's own configs
    assert "launch.num_processes=2" in overrides or preflight._cuda_devices()


def test_a_launch_that_starts_the_wrong_number_of_processes_fails_loudly(monkeypatch):
    profile = config.load_profile("full-4xa100")
    monkeypatch.setenv(launch.LAUNCHED_ENV, "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="started 1 process"):
        launch.prepare_launched_process(profile)
    assert launch.inside_distributed_launch()  # so the stage never launches itself again


def test_preflight_refuses_the_cpu_profiles():
    with pytest.raises(preflight.PreflightError, match="already runs on this machine"):
        preflight.run("cpu")
