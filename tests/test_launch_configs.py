"""The accelerate + DeepSpeed configs and launch commands, checked by the libraries that consume them.

A typo in ``configs/accelerate/*.yaml`` or in the argv :func:`vadr1_lib.cluster.launch.accelerate_command`
builds would only surface on the 4x A100 machine, hours into a queue. Here accelerate's own
config loader, its launch argument parser and its launch validation read them on a CPU, and
``DeepSpeedPlugin`` builds the DeepSpeed config the training processes would get.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env

from vadr1_lib import cli, config, paths, stages
from vadr1_lib.cluster import launch
from vadr1_lib.config import load_profile

ACCELERATE_DIR = paths.CONFIGS_DIR / "accelerate"
FULL = load_profile("full-4xa100")
STAGE_ZERO = {"sft": 2, "grpo": 3}


@pytest.mark.parametrize(("stage", "zero_stage"), STAGE_ZERO.items())
def test_accelerate_config_loads_with_accelerates_loader(stage: str, zero_stage: int) -> None:
    config_file = ACCELERATE_DIR / getattr(FULL.launch, f"accelerate_config_{stage}")
    config = load_config_from_file(str(config_file))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.deepspeed_config["zero_stage"] == zero_stage
    assert config.mixed_precision == FULL.train.mixed_precision == "bf16"
    assert config.num_processes == FULL.launch.num_processes == 4
    assert (config.num_machines, config.use_cpu) == (1, False)
    # ZeRO-3 must save one 16-bit file, or the GRPO result would not load with from_pretrained
    assert config.deepspeed_config.get("zero3_save_16bit_model", False) is (zero_stage == 3)


def _validated_launch_args(stage: str):
    """The argv of ``accelerate_command`` parsed and validated the way ``accelerate launch`` does."""
    command = launch.accelerate_command(FULL, stage, ["--profile", FULL.name])
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(command[3:])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    return args, defaults, mixed_precision_from_config


@pytest.mark.parametrize(("stage", "zero_stage"), STAGE_ZERO.items())
def test_accelerate_command_is_a_valid_accelerate_launch(stage: str, zero_stage: int) -> None:
    args, _, _ = _validated_launch_args(stage)
    assert args.module and args.training_script == "vadr1_lib"
    assert args.training_script_args == [stage, "--profile", "full-4xa100"]
    assert Path(args.config_file) == ACCELERATE_DIR / getattr(FULL.launch, f"accelerate_config_{stage}")
    assert args.use_deepspeed and not args.multi_gpu and not args.use_fsdp
    assert (args.num_processes, args.zero_stage, args.mixed_precision) == (4, zero_stage, "bf16")


@pytest.mark.parametrize(("stage", "zero_stage"), STAGE_ZERO.items())
def test_training_processes_get_the_intended_deepspeed_config(stage: str, zero_stage: int, monkeypatch) -> None:
    """The environment ``accelerate launch`` hands each process, read back by ``DeepSpeedPlugin``."""
    args, defaults, mixed_precision_from_config = _validated_launch_args(stage)
    # as accelerate.commands.launch.launch_command does before calling deepspeed_launcher
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == zero_stage
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "none"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is (zero_stage == 3)
    assert plugin.zero3_init_flag is (zero_stage == 3)
    # batch size, accumulation and clipping stay "auto": TrainingArguments fill them from the profile
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
    assert plugin.deepspeed_config["gradient_clipping"] == "auto"


@pytest.mark.parametrize("stage", STAGE_ZERO)
def test_hf_deepspeed_config_accepts_the_plugin_config(stage: str) -> None:
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (the `cluster` extra installs it)")
    from transformers.integrations import HfDeepSpeedConfig

    config_file = ACCELERATE_DIR / getattr(FULL.launch, f"accelerate_config_{stage}")
    ds = load_config_from_file(str(config_file)).deepspeed_config
    plugin = DeepSpeedPlugin(zero_stage=ds["zero_stage"], zero3_init_flag=ds["zero3_init_flag"],
                             zero3_save_16bit_model=ds.get("zero3_save_16bit_model", False))
    hf_config = HfDeepSpeedConfig(plugin.deepspeed_config)
    assert hf_config.is_zero3() is (STAGE_ZERO[stage] == 3)


def test_sft_dry_run_prints_the_zero2_accelerate_command(release_sft_path) -> None:
    """Needs the release's SFT file (its hash is part of the stage fingerprint); downloads nothing."""
    # HF_HUB_OFFLINE: any attempt to reach the hub fails the command instead of downloading.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VADR1_RELEASE_DIR": str(release_sft_path.parent)}
    result = subprocess.run([sys.executable, "-m", "vadr1_lib", "sft", "--profile", "full-4xa100", "--dry-run"],
                            capture_output=True, text=True, cwd=paths.PROJECT_ROOT, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    expected = launch.format_command(launch.accelerate_command(FULL, "sft", ["--profile", "full-4xa100"]))
    assert result.stdout.strip().splitlines()[-1] == expected
    assert "--config_file " + str(ACCELERATE_DIR / "zero2.yaml") in expected


SBATCH_SCRIPTS = {"slurm_full_4xa100.sbatch": "full-4xa100", "slurm_qlora_24gb.sbatch": "qlora-24gb",
                  "slurm_full_multinode.sbatch": "full-4xa100"}


@pytest.mark.parametrize(("script", "profile_name"), SBATCH_SCRIPTS.items())
def test_slurm_script_is_valid_bash_and_names_real_profiles_and_commands(script: str, profile_name: str) -> None:
    path = paths.PROJECT_ROOT / "scripts" / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    profiles = set(re.findall(r"--profile (\S+)", text))
    assert profiles == {profile_name} and profile_name in config.available_profiles()
    commands = set(re.findall(r"-m vadr1_lib ([a-z-]+)", text))
    assert {"run-notebooks", "sft", "grpo", "plan-memory"} <= commands
    subcommands = cli.build_parser()._subparsers._group_actions[0].choices  # argparse keeps them here
    assert commands <= set(subcommands), commands - set(subcommands)
    gpus = int(re.search(r"^#SBATCH --gres=gpu:(\d+)$", text, re.MULTILINE).group(1))
    assert gpus == load_profile(profile_name).launch.num_processes
    assert re.search(r"^#SBATCH --output=runs/", text, re.MULTILINE)
    # requeued before the time limit: the signal reaches the script, which puts the job back
    assert re.search(r"^#SBATCH --requeue$", text, re.MULTILINE) and re.search(r"^#SBATCH --signal=B:USR1@\d+$", text, re.MULTILINE)
    assert "trap requeue USR1" in text and 'scontrol requeue "${SLURM_JOB_ID}"' in text


def test_the_printed_stage_command_is_the_one_that_runs_with_every_override() -> None:
    profile = load_profile("full-4xa100", ["grpo.max_steps=3", "data.video_root=/videos"])
    command = stages.launch_command(profile, "grpo", ["--no-ava"])
    assert command[command.index("vadr1_lib"):] == ["vadr1_lib", "grpo", "--profile", "full-4xa100", "--no-ava",
                                                      "--set=grpo.max_steps=3", '--set=data.video_root="/videos"']
    assert stages.launch_command(load_profile("cpu"), "sft") is None  # one process: trained in place


@pytest.mark.parametrize(("nodelist", "first"), [("gpu[07-08,12],cpu01", "gpu07"), ("node01", "node01"),
                                                  ("a1,b2", "a1"), ("rack[1-2]-node[08-09]", "rack1-node08"),
                                                  ("gpu-[3]", "gpu-3"), ("10.0.0.5", "10.0.0.5")])
def test_the_main_machine_is_the_first_host_of_slurms_node_list(nodelist: str, first: str) -> None:
    assert launch.first_host(nodelist) == first


TWO_NODES = load_profile("full-4xa100", ["launch.num_machines=2"])


def _machine_args(profile, monkeypatch, environ: dict[str, str]):
    """The stage command one machine builds, parsed and validated as ``accelerate launch`` does, and
    the torchrun arguments its DeepSpeed launch derives from it."""
    for key in ("SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    command = stages.launch_command(profile, "grpo")
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    cmd, _ = prepare_deepspeed_cmd_env(args)
    assert cmd is None  # DeepSpeed's "standard" multi-node launcher: torchrun on every machine, no ssh
    return args


@pytest.mark.parametrize("node", [0, 1])
def test_every_node_of_a_slurm_job_launches_its_part_with_its_rank_and_the_first_node_as_main(node, monkeypatch):
    args = _machine_args(TWO_NODES, monkeypatch, {"SLURM_NODEID": str(node), "SLURM_JOB_NODELIST": "gpu[07-08]",
                                                  "SLURM_JOB_NUM_NODES": "2"})
    assert (args.num_processes, args.num_machines, args.machine_rank, args.main_process_ip) == (8, 2, node, "gpu07")
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", node, "4")  # 4 GPUs on each of 2 machines
    assert args.rdzv_endpoint == f"gpu07:{TWO_NODES.launch.main_process_port}"  # torchrun's static rendezvous
    assert args.use_deepspeed and args.zero_stage == 3


def test_a_machines_rank_and_the_main_address_can_be_given_by_hand(monkeypatch):
    by_hand = load_profile("full-4xa100", ["launch.num_machines=2", "launch.machine_rank=1",
                                           "launch.main_process_ip=10.0.0.5", "launch.main_process_port=29600"])
    args = _machine_args(by_hand, monkeypatch, {"SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "gpu07"})  # hand wins
    assert (args.machine_rank, args.node_rank, args.rdzv_endpoint) == (1, 1, "10.0.0.5:29600")


def test_a_multi_machine_launch_without_its_placement_or_with_the_wrong_node_count_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="launch.num_machines=2 needs this machine's rank and the main machine's"):
        _machine_args(TWO_NODES, monkeypatch, {})
    with pytest.raises(ValueError, match="this SLURM job has 3 nodes .* launch.num_machines=2"):
        _machine_args(TWO_NODES, monkeypatch, {"SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[1-3]",
                                               "SLURM_JOB_NUM_NODES": "3"})
    with pytest.raises(config.ProfileError, match="launch.machine_rank=2 must be < launch.num_machines=2"):
        load_profile("full-4xa100", ["launch.num_machines=2", "launch.machine_rank=2"])


def test_a_launch_across_machines_must_start_every_machines_processes(monkeypatch):
    monkeypatch.setenv(launch.LAUNCHED_ENV, "1")
    monkeypatch.setenv("WORLD_SIZE", "4")  # one machine's 4, as a launch that saw no other machine
    with pytest.raises(RuntimeError, match=r"started 4 process\(es\), the profile asks for 8 \(launch.num_processes=4 "
                                           r"on each of launch.num_machines=2\)"):
        launch.prepare_launched_process(TWO_NODES)


def test_the_multinode_script_starts_each_stage_as_one_srun_task_per_node_on_every_node():
    text = (paths.PROJECT_ROOT / "scripts" / "slurm_full_multinode.sbatch").read_text()
    nodes = int(re.search(r"^#SBATCH --nodes=(\d+)$", text, re.MULTILINE).group(1))
    assert nodes > 1 and re.search(r"^#SBATCH --ntasks-per-node=1$", text, re.MULTILINE)
    for stage in ("sft", "grpo"):  # each stage a step of its own: the next starts when every node has finished
        (line,) = [line for line in text.splitlines() if re.match(rf"srun .*-m vadr1_lib {stage} ", line)]
        assert "--ntasks-per-node=1" in line and "--kill-on-bad-exit=1" in line and '"${MACHINES[@]}"' in line
    assert 'MACHINES=(--set "launch.num_machines=${SLURM_JOB_NUM_NODES}")' in text
    assert not re.search(r"^srun .*run-notebooks", text, re.MULTILINE)  # the notebooks run once, on the first node


def test_side_by_side_runs_print_each_line_after_its_name_and_one_failure_leaves_the_other_running(tmp_path, capsys):
    printer = "import sys, time; print('first'); time.sleep(1.5); print('partial\\rredrawn'); sys.exit({code})"
    codes = launch.run_side_by_side({"ok": [sys.executable, "-c", printer.format(code=0)],
                                     "broken": [sys.executable, "-c", "import sys; print('gone'); sys.exit(3)"]},
                                    tmp_path / "logs", poll_seconds=0.2)
    assert codes == {"ok": 0, "broken": 3}  # the broken one exited first; the other still ended its work
    lines = capsys.readouterr().out.splitlines()
    assert "[ok] first" in lines and "[ok] redrawn" in lines and "[broken] gone" in lines
    assert (tmp_path / "logs" / "ok.log").read_text().splitlines()[0] == "first"


def test_side_by_side_runs_are_refused_for_a_profile_that_trains_on_several_processes():
    with pytest.raises(ValueError, match="concurrent_runs=2 .* 4 processes"):
        stages.ensure_rl_runs(load_profile("full-4xa100", {"launch.concurrent_runs": 2}))
