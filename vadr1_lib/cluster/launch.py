"""Multi-process stages: the same CLI command, started by ``accelerate launch``.

A profile with more than one process in all (``launch.num_processes`` per machine times
``launch.num_machines``; the paper's 4x A100 is 4 x 1) runs its training stages as
``accelerate launch --config_file configs/accelerate/<zero2|zero3>.yaml -m vadr1_lib <stage>
--profile P ...``. The CLI relaunches itself that way when it is not already inside such a
launch, and the notebooks build and run the same command (or print it in dry-run mode), so
there is one way to start a stage at every scale.

Across machines every machine runs that same CLI command (SLURM: one ``srun`` task per
node, ``scripts/slurm_full_multinode.sbatch``); :func:`accelerate_command` adds the
machine's rank and the main machine's address, taken from the scheduler or given by hand
(:func:`machine_placement`), and each machine's ``accelerate launch`` starts its processes
(torchrun's static rendezvous; DeepSpeed's ``standard`` multi-node launcher).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
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

    - The launcher must have started the profile's number of processes, over all machines:
      a config that starts fewer would train on a fraction of the batch, silently (an
      accelerate launch with ``--cpu`` starts each machine as a world of one).
    - Under DeepSpeed on a CPU (``preflight``), DeepSpeed's communication (gloo) starts now.
      On a GPU accelerate starts it when the training arguments are made; with ``use_cpu`` it
      does not, and ``deepspeed.initialize`` starts it only when the trainer is prepared: too
      late for ZeRO-3, under which TRL loads GRPO's reference model partitioned
      (``deepspeed.zero.Init``) while the trainer is being built.
    """
    if os.environ.get(LAUNCHED_ENV) != "1":
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != world_size(profile):
        raise RuntimeError(f"the launcher started {world} process(es), the profile asks for {world_size(profile)} "
                           f"(launch.num_processes={profile.launch.num_processes} on each of "
                           f"launch.num_machines={profile.launch.num_machines}); check the accelerate config")
    # torchrun's names: which process of which machine this is, one line each in the job's log
    print(f"process {os.environ.get('RANK', '0')} of {world}: machine {os.environ.get('GROUP_RANK', '0')} of "
          f"{profile.launch.num_machines}, local process {os.environ.get('LOCAL_RANK', '0')}", flush=True)
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


def world_size(profile: Profile) -> int:
    """The processes a stage runs on, over all machines."""
    return profile.launch.num_processes * profile.launch.num_machines


def needs_launcher(profile: Profile) -> bool:
    return world_size(profile) > 1 and not inside_distributed_launch()


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, as ``scontrol show hostnames`` prints it first:
    ``gpu[07-08,12],cpu01`` -> ``gpu07``. Node ids follow the list, so it is node 0's."""
    first = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())
    if first is None:
        raise ValueError(f"not a SLURM node list: {nodelist!r}")
    return re.sub(r"\[([^\]\-,]+)[^\]]*\]", r"\1", first.group(0))


def machine_placement(profile: Profile, environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """This machine's rank and the main machine's address for a launch over
    ``launch.num_machines`` machines: ``launch.machine_rank`` / ``launch.main_process_ip`` when
    given by hand, else SLURM's (``SLURM_NODEID``, the first host of ``SLURM_JOB_NODELIST``),
    which srun sets in the task it starts on each node."""
    machines = profile.launch.num_machines
    rank = profile.launch.machine_rank
    address = profile.launch.main_process_ip
    from_slurm = (rank is None and "SLURM_NODEID" in environ) or (address is None and "SLURM_JOB_NODELIST" in environ)
    if rank is None and "SLURM_NODEID" in environ:
        rank = int(environ["SLURM_NODEID"])
    if address is None and "SLURM_JOB_NODELIST" in environ:
        address = first_host(environ["SLURM_JOB_NODELIST"])
    if rank is None or address is None:
        raise ValueError(f"launch.num_machines={machines} needs this machine's rank and the main machine's address: "
                         "run the stage under SLURM, one srun task per node (scripts/slurm_full_multinode.sbatch), "
                         "or set launch.machine_rank and launch.main_process_ip on each machine")
    nodes = environ.get("SLURM_JOB_NUM_NODES")
    if from_slurm and nodes is not None and int(nodes) != machines:
        raise ValueError(f"this SLURM job has {nodes} nodes (SLURM_JOB_NUM_NODES) and the profile asks for "
                         f"launch.num_machines={machines}; pass --set launch.num_machines=${{SLURM_JOB_NUM_NODES}}")
    if rank >= machines:
        raise ValueError(f"machine rank {rank} (SLURM_NODEID) is not below launch.num_machines={machines}")
    return rank, address


def accelerate_config_path(profile: Profile, stage: str) -> Path:
    """The accelerate/DeepSpeed config a multi-process ``stage`` (sft, grpo) runs under."""
    config_name = getattr(profile.launch, STAGE_CONFIG_FIELD[stage])
    if not config_name:
        raise ValueError(f"profile {profile.name!r} asks for {world_size(profile)} processes but sets no "
                         f"launch.{STAGE_CONFIG_FIELD[stage]}")
    config_file = paths.CONFIGS_DIR / "accelerate" / config_name
    if not config_file.is_file():
        raise FileNotFoundError(f"accelerate config {config_file} not found")
    return config_file


def accelerate_command(profile: Profile, stage: str, stage_args: list[str]) -> list[str]:
    """The exact command that runs ``stage`` on this machine's part of :func:`world_size`
    processes (``--num_processes`` counts all machines', as accelerate does)."""
    config_file = accelerate_config_path(profile, stage)
    machines: list[str] = []
    if profile.launch.num_machines > 1:
        rank, address = machine_placement(profile)
        machines = ["--num_machines", str(profile.launch.num_machines), "--machine_rank", str(rank),
                    "--main_process_ip", address, "--main_process_port", str(profile.launch.main_process_port)]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "--num_processes", str(world_size(profile)), *machines, "-m", "vadr1_lib", stage, *stage_args]


def format_command(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


class LaunchFailed(RuntimeError):
    """A stage started under ``accelerate launch`` failed; its processes printed why."""


def run(command: list[str]) -> int:
    """Run a launch command in the foreground, streaming its output."""
    print(f"$ {format_command(command)}", flush=True)
    return subprocess.call(command, cwd=paths.PROJECT_ROOT, env={**os.environ, LAUNCHED_ENV: "1"})


def srun_environment(rank: int, machines: int, host: str = "127.0.0.1") -> dict[str, str]:
    """What :func:`machine_placement` reads in the task srun starts on node ``rank`` of a job
    on ``machines`` nodes whose first node is ``host``."""
    return {"SLURM_NODEID": str(rank), "SLURM_JOB_NODELIST": host, "SLURM_JOB_NUM_NODES": str(machines)}


def _start_logged(command: list[str], log: Path, environ: Mapping[str, str]) -> subprocess.Popen:
    """Start ``command`` with its output (stdout and stderr) in ``log``, in its own process
    group, so that stopping it stops its children too."""
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=paths.PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **environ}, start_new_session=True)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)


def run_as_machines_here(command: list[str], machines: int, logs: Path,
                         environ: Mapping[str, str] | None = None) -> list[int]:
    """Run ``command`` as ``machines`` machines on this host, the way srun starts one task per
    node (``preflight --machines``): all at once, each with its node's SLURM variables
    (:func:`srun_environment`, on top of ``environ``) and its output in
    ``logs/machine-<rank>.log``. When one fails, the others are stopped (srun's
    ``--kill-on-bad-exit``), since they would wait for it at the rendezvous. Returns their
    exit statuses."""
    logs.mkdir(parents=True, exist_ok=True)
    processes = [_start_logged(command, logs / f"machine-{rank}.log", {**(environ or {}), **srun_environment(rank, machines)})
                 for rank in range(machines)]
    while any(process.poll() is None for process in processes):
        if any(process.poll() not in (None, 0) for process in processes):
            _stop(processes)
        time.sleep(1)
    return [process.returncode for process in processes]


def run_side_by_side(commands: Mapping[str, list[str]], logs: Path, poll_seconds: float = 1.0) -> dict[str, int]:
    """Run independent commands at once (``launch.concurrent_runs``), each with its output in
    ``logs/<name>.log``, and print their lines as they come, each after its command's name in
    brackets: one notebook cell follows both runs. One that fails leaves the others running
    (they do not wait for it); an interrupt (a student stopping the cell) stops them all.
    Returns each command's exit status."""
    logs.mkdir(parents=True, exist_ok=True)
    for name, command in commands.items():
        print(f"[{name}] $ {format_command(command)}  (output: {logs / f'{name}.log'})", flush=True)
    processes = {name: _start_logged(command, logs / f"{name}.log", {"PYTHONUNBUFFERED": "1"})  # lines as they come
                 for name, command in commands.items()}
    readers = {name: open(logs / f"{name}.log", encoding="utf-8", errors="replace") for name in commands}
    pending = {name: "" for name in commands}

    def echo(final: bool) -> None:
        for name, reader in readers.items():
            *lines, pending[name] = (pending[name] + reader.read()).split("\n")
            if final and pending[name]:
                lines, pending[name] = [*lines, pending[name]], ""
            for line in lines:
                last_state = line.rsplit("\r", 1)[-1]  # a line redrawn with carriage returns: its last state
                print(f"[{name}] {last_state}", flush=True)

    try:
        while any(process.poll() is None for process in processes.values()):
            echo(final=False)
            time.sleep(poll_seconds)
        echo(final=True)
    except BaseException:
        _stop(list(processes.values()))
        raise
    finally:
        for reader in readers.values():
            reader.close()
    return {name: process.returncode for name, process in processes.items()}
