"""DeviceProfile: what this machine can run, read once and passed around as a value.

``detect_profile(settings)`` never raises. Every probe runs on its own; a probe that
cannot read something leaves the field ``None`` and records why in ``unknown``
(field name -> reason), so ``locara device`` can say "GPU: unknown (nvidia-smi
failed: ...)" instead of crashing or guessing. The profile is a frozen value with a
JSON round trip (``to_json`` / ``DeviceProfile.from_json``): tests and ``locara plan
--profile FILE`` use synthetic profiles of other machines. ``current_device(settings)``
is the profile every load plans for: this machine's, or the file that
``LOCARA_DEVICE_PROFILE`` names (to run as if on another machine, e.g. in tests).

Memory: ``ram_total_bytes`` and ``ram_available_bytes`` are what Locara may use, i.e.
the physical numbers capped by the cgroup limit (``memory.max`` in cgroup v2,
``memory.limit_in_bytes`` in v1): a container with a 4 GB limit on a 64 GB host is a
4 GB machine for planning. The uncapped numbers stay in ``ram_physical_bytes``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from locara.device.gpus import CPU_BANDWIDTH_GBPS, apple_bandwidth, detect_gpus
from locara.device.gpus import GPUInfo as GPUInfo  # re-export: part of the profile's API
from locara.errors import DeviceProfileError
from locara.settings import Settings

PROFILE_SCHEMA = 1
PROFILE_ENV = "LOCARA_DEVICE_PROFILE"

# CPU features that matter for which llama.cpp kernels run; the rest of /proc/cpuinfo is noise.
_INTERESTING_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "dotprod",
    "i8mm",
    "sve",
    "sve2",
)
_TOOL_TIMEOUT_S = 5.0
_CGROUP_UNLIMITED = 1 << 60  # v1 reports "no limit" as a huge page-rounded number


@dataclass(frozen=True)
class BatteryInfo:
    present: bool
    percent: float | None = None
    plugged_in: bool | None = None


@dataclass(frozen=True)
class DeviceProfile:
    """A machine, as far as model planning cares. JSON-serialisable and frozen."""

    os: str
    os_version: str
    arch: str
    ram_total_bytes: int
    ram_available_bytes: int
    cpu_model: str | None = None
    cores_logical: int | None = None
    cores_performance: int | None = None
    cores_efficiency: int | None = None
    cpu_features: tuple[str, ...] = ()
    ram_physical_bytes: int | None = None
    cgroup_memory_limit_bytes: int | None = None
    gpus: tuple[GPUInfo, ...] = ()
    battery: BatteryInfo | None = None
    store_path: str | None = None
    disk_free_bytes: int | None = None
    offline: bool = False
    mlx_installed: bool = False
    llama_cpp_installed: bool = False
    memory_bandwidth_gbps: float | None = None
    unknown: dict[str, str] = field(default_factory=dict)
    schema: int = PROFILE_SCHEMA

    # -- facts the planner asks about -------------------------------------------------

    @property
    def is_apple_silicon(self) -> bool:
        return self.os == "Darwin" and self.arch in ("arm64", "aarch64")

    @property
    def unified_memory(self) -> bool:
        return any(g.unified_memory for g in self.gpus)

    @property
    def discrete_gpu(self) -> GPUInfo | None:
        """The largest non-unified GPU with known memory (CUDA/ROCm/Vulkan), if any."""
        found = [g for g in self.gpus if not g.unified_memory and g.memory_total_bytes]
        return max(found, key=lambda g: g.memory_total_bytes or 0) if found else None

    @property
    def on_battery(self) -> bool:
        return bool(self.battery and self.battery.present and self.battery.plugged_in is False)

    @property
    def supported_runtimes(self) -> frozenset[str]:
        """Backends that can run here: llama.cpp always (it is a core dependency), MLX if installed."""
        runtimes = {"llama_cpp"}
        if self.mlx_installed:
            runtimes.add("mlx")
        return frozenset(runtimes)

    # -- JSON ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_features"] = list(self.cpu_features)
        data["gpus"] = [asdict(g) for g in self.gpus]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "profile") -> DeviceProfile:
        """Build a profile from parsed JSON; anything malformed is a DeviceProfileError."""
        if not isinstance(data, dict):
            raise DeviceProfileError(f"{source}: a device profile must be a JSON object")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise DeviceProfileError(f"{source}: unknown field(s) {', '.join(extra)}")
        for name in ("gpus", "cpu_features"):
            if not isinstance(data.get(name, []), list):
                raise DeviceProfileError(f"{source}: {name} must be a list")
        for i, g in enumerate(data.get("gpus") or []):
            if not isinstance(g, dict):
                raise DeviceProfileError(f"{source}: gpus[{i}] must be an object")
        if not isinstance(data.get("unknown", {}), dict):
            raise DeviceProfileError(f"{source}: unknown must be an object (field -> reason)")
        try:
            kw = dict(data)
            kw["gpus"] = tuple(GPUInfo(**g) for g in kw.get("gpus") or ())
            for g in kw["gpus"]:
                if g.kind not in ("metal", "cuda", "rocm", "vulkan"):
                    raise ValueError(f"unknown GPU kind {g.kind!r}")
            bat = kw.get("battery")
            kw["battery"] = BatteryInfo(**bat) if isinstance(bat, dict) else None
            kw["cpu_features"] = tuple(str(x) for x in kw.get("cpu_features") or ())
            kw["unknown"] = {str(k): str(v) for k, v in (kw.get("unknown") or {}).items()}
            profile = cls(**kw)
        except (TypeError, ValueError, AttributeError) as exc:
            raise DeviceProfileError(f"{source}: {exc}") from exc
        for name in ("ram_total_bytes", "ram_available_bytes"):
            value = getattr(profile, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise DeviceProfileError(f"{source}: {name} must be a positive integer")
        if profile.ram_available_bytes > profile.ram_total_bytes:
            raise DeviceProfileError(f"{source}: ram_available_bytes exceeds ram_total_bytes")
        return profile

    @classmethod
    def from_json(cls, text: str, source: str = "profile") -> DeviceProfile:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeviceProfileError(f"{source} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, source)


def load_profile(path: Path) -> DeviceProfile:
    """Read a DeviceProfile.json (written by ``locara device --json -o FILE``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DeviceProfileError(f"cannot read device profile {path}: {exc}") from exc
    return DeviceProfile.from_json(text, str(path))


def current_device(settings: Settings, env: Mapping[str, str] | None = None) -> DeviceProfile:
    """The device every plan of this process is made for.

    ``LOCARA_DEVICE_PROFILE=FILE`` (read now, not at import) names a DeviceProfile.json
    to plan for instead of this machine: a saved profile, or a synthetic one in tests.
    A file that cannot be read is a DeviceProfileError, never a silent fallback.
    """
    env = os.environ if env is None else env
    path = env.get(PROFILE_ENV, "").strip()
    profile = load_profile(Path(path).expanduser()) if path else detect_profile(settings)
    return with_rpc_workers(profile, settings.rpc)


def with_rpc_workers(profile: DeviceProfile, endpoints: tuple[str, ...]) -> DeviceProfile:
    """``profile`` plus llama.cpp RPC workers, asked now for their memory, as one device
    layers can be offloaded to (llama.cpp splits them by each worker's free memory).
    A worker that cannot be used is a BackendUnavailableError naming it."""
    if not endpoints:
        return profile
    from locara.backends.rpc import probe

    workers = [probe(e) for e in endpoints]
    gpu = GPUInfo(
        kind="rpc",
        name="RPC workers "
        + ", ".join(f"{w.endpoint} ({w.free_bytes / 1e9:.1f} GB free)" for w in workers),
        memory_total_bytes=sum(w.total_bytes for w in workers),
        memory_free_bytes=sum(w.free_bytes for w in workers),
        driver="llama.cpp RPC " + ".".join(map(str, workers[0].version)),
    )
    return replace(profile, gpus=(*profile.gpus, gpu))


# -- detection ---------------------------------------------------------------------------

Runner = Callable[[list[str]], str]


def _run_tool(argv: list[str]) -> str:
    """Run a detection tool; FileNotFoundError means "not installed", anything else a failure."""
    exe = shutil.which(argv[0])
    if exe is None:
        raise FileNotFoundError(argv[0])
    proc = subprocess.run(
        [exe, *argv[1:]],
        capture_output=True,
        text=True,
        timeout=_TOOL_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"exit {proc.returncode}: {msg[-1] if msg else 'no output'}")
    return proc.stdout


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cgroup_memory() -> tuple[int | None, int | None]:
    """(limit, usage) of this process's memory cgroup; None where there is no limit."""
    # v2: the process's cgroup path from /proc/self/cgroup ("0::/path").
    rel = "/"
    text = _read("/proc/self/cgroup") or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            rel = line[3:] or "/"
    for base in (f"/sys/fs/cgroup{rel}", "/sys/fs/cgroup"):
        raw = _read(f"{base.rstrip('/')}/memory.max")
        if raw is not None:
            raw = raw.strip()
            if raw == "max":
                return None, None
            usage = _read(f"{base.rstrip('/')}/memory.current")
            return int(raw), int(usage) if usage and usage.strip().isdigit() else None
    raw = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if raw is not None and raw.strip().isdigit():
        limit = int(raw.strip())
        if limit >= _CGROUP_UNLIMITED:
            return None, None
        usage = _read("/sys/fs/cgroup/memory/memory.usage_in_bytes")
        return limit, int(usage) if usage and usage.strip().isdigit() else None
    return None, None


def _cpu_linux(unknown: dict[str, str]) -> tuple[str | None, tuple[str, ...]]:
    info = _read("/proc/cpuinfo")
    if info is None:
        unknown["cpu_model"] = "/proc/cpuinfo is not readable"
        return None, ()
    model = None
    flags: set[str] = set()
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    if "asimd" in flags:
        flags.add("neon")
    if "asimddp" in flags:
        flags.add("dotprod")
    if model is None:
        unknown["cpu_model"] = "no model name in /proc/cpuinfo"
    return model, tuple(f for f in _INTERESTING_FLAGS if f in flags)


def _sysctl(run: Runner, name: str) -> str:
    return run(["sysctl", "-n", name]).strip()


def _cpu_darwin(run: Runner, unknown: dict[str, str]) -> tuple[str | None, tuple[str, ...]]:
    model: str | None = None
    try:
        model = _sysctl(run, "machdep.cpu.brand_string")
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        unknown["cpu_model"] = f"sysctl failed: {exc}"
    features: list[str] = []
    if platform.machine() == "arm64":
        features.append("neon")
        for flag, key in (("dotprod", "hw.optional.arm.FEAT_DotProd"),
                          ("i8mm", "hw.optional.arm.FEAT_I8MM")):  # fmt: skip
            try:
                if _sysctl(run, key) == "1":
                    features.append(flag)
            except (OSError, RuntimeError, subprocess.SubprocessError):
                pass
    return model, tuple(features)


def _cores(run: Runner, unknown: dict[str, str]) -> tuple[int | None, int | None, int | None]:
    import psutil

    logical = psutil.cpu_count(logical=True)
    physical = psutil.cpu_count(logical=False)
    if sys.platform == "darwin":
        try:
            perf = int(_sysctl(run, "hw.perflevel0.physicalcpu"))
            try:
                eff = int(_sysctl(run, "hw.perflevel1.physicalcpu"))
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError):
                eff = 0
            return logical, perf, eff
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError):
            pass
    # Intel hybrid CPUs expose their P and E cores as two PMUs.
    core_cpus = _read("/sys/devices/cpu_core/cpus")
    atom_cpus = _read("/sys/devices/cpu_atom/cpus")
    if core_cpus and atom_cpus:
        return logical, _count_cpulist(core_cpus), _count_cpulist(atom_cpus)
    if physical is None:
        unknown["cores_performance"] = "psutil could not count physical cores"
        return logical, None, None
    return logical, physical, 0


def _count_cpulist(text: str) -> int:
    n = 0
    for part in text.strip().split(","):
        if "-" in part:
            a, b = part.split("-")
            n += int(b) - int(a) + 1
        elif part:
            n += 1
    return n


def _battery(unknown: dict[str, str]) -> BatteryInfo | None:
    import psutil

    try:
        bat = psutil.sensors_battery()
    except (OSError, RuntimeError, AttributeError, NotImplementedError) as exc:
        unknown["battery"] = f"psutil cannot read the battery: {exc}"
        return None
    if bat is None:
        return BatteryInfo(present=False)
    plugged = bat.power_plugged if isinstance(bat.power_plugged, bool) else None
    return BatteryInfo(present=True, percent=round(float(bat.percent), 1), plugged_in=plugged)


def _has_default_route() -> bool | None:
    text = _read("/proc/net/route")
    if text is None:
        return None
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 2 and parts[1] == "00000000":
            return True
    return False


def detect_profile(settings: Settings, run: Runner | None = None) -> DeviceProfile:
    """Probe this machine now. Never raises: what cannot be read is None, with a reason.

    ``run`` executes a detection tool and returns its stdout (tests pass one that
    fails); by default tools are looked up on PATH and given a few seconds each.
    """
    import psutil

    run = run or _run_tool
    unknown: dict[str, str] = {}
    vm = psutil.virtual_memory()
    physical_total, physical_avail = int(vm.total), int(vm.available)
    limit: int | None = None
    try:
        limit, usage = _cgroup_memory()
    except (OSError, ValueError) as exc:
        unknown["cgroup_memory_limit_bytes"] = f"cannot read cgroup limits: {exc}"
        usage = None
    total, avail = physical_total, physical_avail
    if limit is not None and limit < physical_total:
        total = limit
        avail = min(physical_avail, max(limit - (usage or 0), 0))
    avail = max(avail, 1)

    if sys.platform == "darwin":
        cpu_model, features = _cpu_darwin(run, unknown)
    elif sys.platform.startswith("linux"):
        cpu_model, features = _cpu_linux(unknown)
    else:
        cpu_model, features = (platform.processor() or None), ()
    try:
        logical, perf, eff = _cores(run, unknown)
    except (OSError, ValueError) as exc:
        unknown["cores_performance"] = f"cannot count cores: {exc}"
        logical, perf, eff = os.cpu_count(), None, None

    store = settings.models_dir
    probe_dir = store
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        disk_free: int | None = shutil.disk_usage(probe_dir).free
    except OSError as exc:
        disk_free = None
        unknown["disk_free_bytes"] = f"cannot stat {probe_dir}: {exc}"

    route = _has_default_route()
    offline = settings.offline or route is False
    if settings.offline:
        unknown.setdefault("offline", "LOCARA_OFFLINE is set")
    elif route is False:
        unknown.setdefault("offline", "no default network route")

    gpus = detect_gpus(run, total, cpu_model, unknown)
    bandwidth = apple_bandwidth(cpu_model) if sys.platform == "darwin" else None
    if bandwidth is None:
        unknown["memory_bandwidth_gbps"] = (
            f"not measured; tok/s estimates assume {CPU_BANDWIDTH_GBPS:.0f} GB/s"
        )

    return DeviceProfile(
        os=platform.system(),
        os_version=platform.release(),
        arch=platform.machine(),
        ram_total_bytes=total,
        ram_available_bytes=min(avail, total),
        cpu_model=cpu_model,
        cores_logical=logical,
        cores_performance=perf,
        cores_efficiency=eff,
        cpu_features=features,
        ram_physical_bytes=physical_total,
        cgroup_memory_limit_bytes=limit,
        gpus=gpus,
        battery=_battery(unknown),
        store_path=str(store),
        disk_free_bytes=disk_free,
        offline=offline,
        mlx_installed=_has_module("mlx"),
        llama_cpp_installed=_has_module("llama_cpp"),
        memory_bandwidth_gbps=bandwidth,
        unknown=unknown,
    )


def _has_module(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def cpu_bandwidth_default() -> float:
    return CPU_BANDWIDTH_GBPS
