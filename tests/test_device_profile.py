"""DeviceProfile: the real machine, JSON round trip, cgroup limits, failing GPU tools, bad files."""

from __future__ import annotations

import json
import os
import platform
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import run_cli
from locara.device import profile as profile_mod
from locara.device.profile import DeviceProfile, detect_profile, load_profile
from locara.errors import DeviceProfileError
from locara.settings import Settings


def test_real_profile_matches_this_machine(settings: Settings) -> None:
    p = detect_profile(settings)
    vm = psutil.virtual_memory()
    assert p.os == platform.system()
    assert p.arch == platform.machine()
    assert p.ram_physical_bytes == vm.total
    assert 0 < p.ram_available_bytes <= p.ram_total_bytes <= vm.total
    assert p.cores_logical == psutil.cpu_count()
    assert p.store_path == str(settings.models_dir)
    assert p.disk_free_bytes is not None and p.disk_free_bytes > 0
    assert p.llama_cpp_installed  # the venv has llama-cpp-python
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next(
            (ln.split(":", 1)[1].split() for ln in cpuinfo.read_text().splitlines()
             if ln.startswith("flags")),
            [],
        )  # fmt: skip
        assert ("avx2" in p.cpu_features) == ("avx2" in flags)
    # Every null comes with a reason, and nothing is silently missing.
    if p.cpu_model is None:
        assert "cpu_model" in p.unknown
    if not p.gpus and p.os == "Linux":
        assert "gpus" in p.unknown or any(k.startswith("gpus.") for k in p.unknown)


def test_profile_json_round_trip(settings: Settings, tmp_path: Path) -> None:
    p = detect_profile(settings)
    again = DeviceProfile.from_json(p.to_json())
    assert again == p
    f = tmp_path / "DeviceProfile.json"
    f.write_text(p.to_json())
    assert load_profile(f) == p


def test_offline_setting_is_reported(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCARA_OFFLINE", "1")
    p = detect_profile(Settings.from_env())
    assert p.offline and "LOCARA_OFFLINE" in p.unknown["offline"]


def test_cgroup_v2_limit_caps_memory(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine has no memory limit; a container would. Only the cgroup files are faked.
    real_read = profile_mod._read
    limit = 2 * 2**30

    def fake_read(path: str) -> str | None:
        if path.endswith("/memory.max"):
            return f"{limit}\n"
        if path.endswith("/memory.current"):
            return f"{512 * 2**20}\n"
        return real_read(path)

    monkeypatch.setattr(profile_mod, "_read", fake_read)
    p = detect_profile(settings)
    assert p.cgroup_memory_limit_bytes == limit
    assert p.ram_total_bytes == limit
    assert p.ram_available_bytes <= limit - 512 * 2**20
    assert p.ram_physical_bytes == psutil.virtual_memory().total


def _tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_gpu_tools_missing(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    p = detect_profile(settings)
    assert p.gpus == ()
    assert "not installed" in p.unknown["gpus"] and "nvidia-smi" in p.unknown["gpus"]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("echo 'NVIDIA-SMI has failed because it could not communicate' >&2; exit 9", "exit 9"),
        ("echo 'garbage without commas'", "unexpected nvidia-smi output"),
        ("echo 'NVIDIA RTX, lots, of, memory'", "nvidia-smi failed"),
    ],
)
def test_gpu_tool_failing_is_a_reason_not_a_crash(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, expected: str
) -> None:
    bin_dir = tmp_path / "bin"
    _tool(bin_dir, "nvidia-smi", script)
    _tool(bin_dir, "rocm-smi", "exit 3")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    p = detect_profile(settings)
    assert p.gpus == ()
    assert expected in p.unknown["gpus.nvidia-smi"]
    assert "exit 3" in p.unknown["gpus.rocm-smi"]


def test_gpu_tool_hanging_times_out(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    _tool(bin_dir, "nvidia-smi", "exec sleep 30")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    monkeypatch.setattr(profile_mod, "_TOOL_TIMEOUT_S", 0.5)
    p = detect_profile(settings)
    assert "timed out" in p.unknown["gpus.nvidia-smi"]


def test_nvidia_gpu_is_parsed(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    _tool(bin_dir, "nvidia-smi", "echo 'NVIDIA GeForce RTX 4090, 24564, 23012, 550.54.14'")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    p = detect_profile(settings)
    (gpu,) = [g for g in p.gpus if g.kind == "cuda"]
    assert gpu.name == "NVIDIA GeForce RTX 4090"
    assert gpu.memory_total_bytes == 24564 * 2**20
    assert gpu.memory_free_bytes == 23012 * 2**20
    assert p.discrete_gpu == gpu


GOOD = {"os": "Linux", "os_version": "6", "arch": "x86_64", "ram_total_bytes": 8 * 2**30,
        "ram_available_bytes": 6 * 2**30}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"os": "Linux"}), "missing"),
        (json.dumps(GOOD | {"ram_total_gb": 8}), "unknown field(s) ram_total_gb"),
        (json.dumps(GOOD | {"ram_total_bytes": -1}), "positive integer"),
        (json.dumps(GOOD | {"ram_available_bytes": 9 * 2**30}), "exceeds"),
        (json.dumps(GOOD | {"gpus": [{"kind": "tpu", "name": "x"}]}), "unknown GPU kind"),
        (json.dumps(GOOD | {"battery": {"present": True, "charge": 3}}), "charge"),
        (json.dumps(GOOD | {"cpu_features": "avx2"}), "cpu_features must be a list"),
        (json.dumps(GOOD | {"gpus": [["cuda", "x"]]}), "gpus[0] must be an object"),
    ],
)
def test_malformed_profile_file(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "DeviceProfile.json"
    f.write_text(text)
    with pytest.raises(DeviceProfileError) as err:
        load_profile(f)
    assert expected in err.value.message
    assert err.value.hint and "locara device --json" in err.value.hint


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(DeviceProfileError, match="cannot read device profile"):
        load_profile(tmp_path / "nope.json")


def test_device_cli(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "DeviceProfile.json"
    r = run_cli("device", "--json", "-o", str(out), home=home)
    assert r.returncode == 0, r.stderr
    printed = DeviceProfile.from_json(r.stdout)
    assert load_profile(out) == printed
    r = run_cli("device", home=home)
    assert r.returncode == 0, r.stderr
    assert "RAM" in r.stdout and "GPU" in r.stdout and "runtimes" in r.stdout


def test_plan_cli_with_malformed_profile(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"os": "Linux"')
    r = run_cli("plan", "smollm2-135m-instruct", "--profile", str(bad), home=home)
    assert r.returncode == 1
    assert "error:" in r.stderr and "not valid JSON" in r.stderr
    assert "hint: write a fresh one with: locara device --json" in r.stderr


@pytest.fixture
def fresh_pynvml() -> Iterator[None]:
    # Each test imports its own fake pynvml; none may leak into the next.
    sys.modules.pop("pynvml", None)
    yield
    sys.modules.pop("pynvml", None)


def _fake_pynvml(tmp_path: Path, body: str) -> Path:
    pkg = tmp_path / "fake-nvml"
    pkg.mkdir()
    (pkg / "pynvml.py").write_text(body)
    return pkg


NVML_OK = """
class _Mem:
    total = 24 * 2**30
    free = 20 * 2**30
def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlSystemGetDriverVersion(): return b"550.54.14"
def nvmlDeviceGetCount(): return 1
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetName(h): return b"NVIDIA RTX A5000"
def nvmlDeviceGetMemoryInfo(h): return _Mem()
"""


@pytest.mark.usefixtures("fresh_pynvml")
def test_nvml_is_used_when_installed(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(_fake_pynvml(tmp_path, NVML_OK)))
    p = detect_profile(settings)
    (gpu,) = [g for g in p.gpus if g.kind == "cuda"]
    assert (gpu.name, gpu.memory_total_bytes, gpu.driver) == (
        "NVIDIA RTX A5000",
        24 * 2**30,
        "550.54.14",
    )


@pytest.mark.usefixtures("fresh_pynvml")
def test_nvml_failing_falls_back_to_nvidia_smi(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = (
        "class NVMLError(Exception): pass\ndef nvmlInit(): raise NVMLError('Driver Not Loaded')\n"
    )
    monkeypatch.syspath_prepend(str(_fake_pynvml(tmp_path, body)))
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    p = detect_profile(settings)  # no crash; no GPU; nvidia-smi reported missing
    assert p.gpus == () and "nvidia-smi" in p.unknown["gpus"]
