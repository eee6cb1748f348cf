"""GPU detection: Metal on Apple Silicon, CUDA (NVML or nvidia-smi), ROCm, Vulkan.

Each probe either returns GPUs, raises FileNotFoundError (the tool is not installed) or
raises another error (the tool failed); ``detect_gpus`` turns failures into reasons in
the profile's ``unknown`` map and never raises.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any, Literal

# "rpc": llama.cpp RPC workers on other machines (locara.backends.rpc), seen as one device.
GPUKind = Literal["metal", "cuda", "rocm", "vulkan", "rpc"]
Runner = Callable[[list[str]], str]


@dataclass(frozen=True)
class GPUInfo:
    """One accelerator. ``memory_total_bytes`` is VRAM, or the GPU's share of unified memory."""

    kind: GPUKind
    name: str
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    unified_memory: bool = False
    driver: str | None = None
    memory_bandwidth_gbps: float | None = None


# Peak memory bandwidth (GB/s) of common Apple chips, for tok/s estimates.
_APPLE_BANDWIDTH = {
    "M1": 68,
    "M1 Pro": 200,
    "M1 Max": 400,
    "M1 Ultra": 800,
    "M2": 100,
    "M2 Pro": 200,
    "M2 Max": 400,
    "M2 Ultra": 800,
    "M3": 100,
    "M3 Pro": 150,
    "M3 Max": 400,
    "M4": 120,
    "M4 Pro": 273,
    "M4 Max": 546,
}
CPU_BANDWIDTH_GBPS = 40.0  # a typical dual-channel DDR4/DDR5 desktop, when nothing is known


def apple_bandwidth(cpu_model: str | None) -> float | None:
    if not cpu_model:
        return None
    m = re.search(r"\b(M\d)( Pro| Max| Ultra)?\b", cpu_model)
    return float(_APPLE_BANDWIDTH[m.group(0)]) if m and m.group(0) in _APPLE_BANDWIDTH else None


def _gpus_metal(run: Runner, ram_total: int, cpu_model: str | None) -> list[GPUInfo]:
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return []
    # Metal may use about 3/4 of unified memory (recommendedMaxWorkingSetSize on >= 32 GB
    # machines; about 2/3 below). The rest stays with the OS.
    share = 0.75 if ram_total >= 32 * 2**30 else 2 / 3
    return [
        GPUInfo(
            kind="metal",
            name=cpu_model or "Apple Silicon GPU",
            memory_total_bytes=int(ram_total * share),
            unified_memory=True,
            memory_bandwidth_gbps=apple_bandwidth(cpu_model),
        )
    ]


def _gpus_nvml() -> list[GPUInfo] | None:
    """CUDA GPUs through NVML (the nvidia-ml-py package) if it is installed, else None."""
    if not _has_module("pynvml"):
        return None
    import importlib

    pynvml: Any = importlib.import_module("pynvml")

    pynvml.nvmlInit()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GPUInfo(
                    kind="cuda",
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_bytes=int(mem.total),
                    memory_free_bytes=int(mem.free),
                    driver=driver.decode() if isinstance(driver, bytes) else str(driver),
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _gpus_nvidia(run: Runner) -> list[GPUInfo]:
    try:
        via_nvml = _gpus_nvml()
    except Exception:  # NVMLError has many subclasses; nvidia-smi then reports the failure
        via_nvml = None
    if via_nvml is not None:
        return via_nvml
    out = run(
        [
            "nvidia-smi",
            "--query-gpu=name,memory.total,memory.free,driver_version",
            "--format=csv,noheader,nounits",
        ]
    )
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            raise ValueError(f"unexpected nvidia-smi output: {line!r}")
        name, total, free, driver = parts
        gpus.append(
            GPUInfo(
                kind="cuda",
                name=name,
                memory_total_bytes=int(float(total)) * 2**20,
                memory_free_bytes=int(float(free)) * 2**20,
                driver=driver,
            )
        )
    return gpus


def _gpus_rocm(run: Runner) -> list[GPUInfo]:
    data = json.loads(run(["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"]))
    if not isinstance(data, dict):
        raise ValueError("unexpected rocm-smi output")
    gpus = []
    for card, info in data.items():
        if not isinstance(info, dict) or not card.startswith("card"):
            continue
        total = info.get("VRAM Total Memory (B)")
        used = info.get("VRAM Total Used Memory (B)")
        total_i = int(total) if total is not None else None
        free_i = total_i - int(used) if total_i is not None and used is not None else None
        name = str(info.get("Card series") or info.get("Card model") or card)
        gpus.append(GPUInfo("rocm", name, total_i, free_i))
    return gpus


def _gpus_vulkan(run: Runner) -> list[GPUInfo]:
    out = run(["vulkaninfo", "--summary"])
    gpus = []
    names = re.findall(r"deviceName\s*=\s*(.+)", out)
    types = re.findall(r"deviceType\s*=\s*(\S+)", out)
    for i, name in enumerate(names):
        dtype = types[i] if i < len(types) else ""
        if "CPU" in dtype:  # llvmpipe: software rendering, not an accelerator
            continue
        gpus.append(GPUInfo("vulkan", name.strip()))
    return gpus


def detect_gpus(
    run: Runner, ram_total: int, cpu_model: str | None, unknown: dict[str, str]
) -> tuple[GPUInfo, ...]:
    found: list[GPUInfo] = list(_gpus_metal(run, ram_total, cpu_model))
    missing: list[str] = []
    for tool, probe in (("nvidia-smi", _gpus_nvidia), ("rocm-smi", _gpus_rocm)):
        try:
            found.extend(probe(run))
        except FileNotFoundError:
            missing.append(tool)
        except (
            OSError,
            RuntimeError,
            ValueError,
            KeyError,
            subprocess.SubprocessError,
        ) as exc:
            unknown[f"gpus.{tool}"] = f"{tool} failed: {exc}"
    # Vulkan only matters when nothing better was found (it lists the same cards again).
    if not found:
        try:
            found.extend(_gpus_vulkan(run))
        except FileNotFoundError:
            missing.append("vulkaninfo")
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
            unknown["gpus.vulkaninfo"] = f"vulkaninfo failed: {exc}"
    if not found and missing and sys.platform != "darwin":
        unknown.setdefault("gpus", "no GPU found (not installed: " + ", ".join(missing) + ")")
    return tuple(found)


def _has_module(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False
