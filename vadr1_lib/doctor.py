"""``doctor``: what this machine has, in one report (versions, device, profiles, data).

Students run it first; cluster users paste it into bug reports. Nothing here downloads or
builds anything: each entry says whether a resource is present and, if not, which
command provisions it.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from vadr1_lib import config, paths

PACKAGES = ("torch", "torchvision", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "decord",
            "datasets", "papermill", "nbmake", "nltk", "dashscope", "deepspeed")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cuda": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads()}
    if info["cuda"]:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def environment_report() -> dict[str, Any]:
    from vadr1_lib.data import footage
    from vadr1_lib.evaluation import wordnet

    release = {name: str(p) if (p := paths.release_file(name)) else None
               for name in (paths.RELEASE_SFT_FILE, paths.RELEASE_RL_FILE)}
    vtest = footage.vtest_path()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "device": _device(),
        "profiles": config.available_profiles(),
        "data_dir": str(paths.data_dir()),
        "runs_dir": str(paths.runs_dir()),
        "release_annotations": release,
        "cctv_footage": str(vtest) if vtest.is_file() else None,
        "wordnet": wordnet.is_available(),
    }


def format_report(report: dict[str, Any]) -> str:
    def mark(ok: object) -> str:
        return "yes" if ok else "no"

    lines = [f"python {report['python']} on {report['platform']}", "packages:"]
    lines += [f"  {name:13s} {version or '-- not installed'}" for name, version in report["packages"].items()]
    device = report["device"]
    lines.append(f"device: {'CUDA ' + ', '.join(device['gpus']) if device['cuda'] else 'CPU only'} "
                 f"(torch threads: {device['cpu_threads']})")
    lines.append(f"profiles: {', '.join(report['profiles'])}")
    lines.append(f"data dir: {report['data_dir']}    runs dir: {report['runs_dir']}")
    for name, path in report["release_annotations"].items():
        lines.append(f"real annotations {name}: {path or f'absent (looked in {paths.release_dir()}; set VADR1_RELEASE_DIR)'}")
    lines.append(f"CCTV footage (vtest.avi): {report['cctv_footage'] or 'not yet provisioned (`python -m vadr1_lib data build` fetches it)'}")
    lines.append(f"WordNet for METEOR: {mark(report['wordnet'])}"
                 + ("" if report["wordnet"] else " (provisioned on first evaluation)"))
    return "\n".join(lines)
