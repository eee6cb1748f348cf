"""Memory budgets, quant classes and expected speed for a device (the planner's arithmetic)."""

from __future__ import annotations

from locara.device.fit import QUANT_BITS
from locara.device.profile import DeviceProfile, cpu_bandwidth_default

GiB = 2**30
LOW_BATTERY_PERCENT = 20.0
USABLE_TPS = 5.0  # below this, generation is too slow to read along

# Quality order, best first; MLX bit widths sit next to their GGUF equivalents.
QUANT_ORDER = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "8BIT",
    "Q6_K",
    "6BIT",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_1",
    "Q5_0",
    "Q4_K_M",
    "4BIT",
    "Q4_K_S",
    "Q4_1",
    "Q4_0",
    "IQ4_XS",
    "Q3_K_L",
    "Q3_K_M",
    "3BIT",
    "Q3_K_S",
    "Q2_K",
)


def quant_rank(quant: str | None) -> int:
    """Lower is better quality; unknown quants sort with Q4_K_M."""
    q = (quant or "").upper()
    return QUANT_ORDER.index(q) if q in QUANT_ORDER else QUANT_ORDER.index("Q4_K_M")


def quant_ceiling(memory_bytes: int) -> str:
    """The best quant for this much memory: more memory affords fewer bits lost."""
    gb = memory_bytes / GiB
    if gb < 12:
        return "Q4_K_M"
    if gb < 24:
        return "Q5_K_M"
    if gb < 48:
        return "Q6_K"
    if gb < 90:
        return "Q8_0"
    return "F16"


def ram_budget(device: DeviceProfile) -> int:
    """Bytes a model may take from RAM: what is available, minus headroom for the OS.

    A desktop's OS and programs need about 4 GB; small machines cannot spare that, so
    the reserve is the smaller of 4 GiB and a quarter of RAM.
    """
    reserve = min(4 * GiB, device.ram_total_bytes // 4)
    budget = min(device.ram_available_bytes, device.ram_total_bytes - reserve)
    if device.is_apple_silicon:
        metal = next((g for g in device.gpus if g.kind == "metal"), None)
        if metal and metal.memory_total_bytes:
            budget = min(budget, metal.memory_total_bytes)
    return max(budget, 0)


def gpu_budget(device: DeviceProfile) -> int | None:
    gpu = device.discrete_gpu
    if gpu is None or not gpu.memory_total_bytes:
        return None
    free = gpu.memory_free_bytes or gpu.memory_total_bytes
    # Leave 10% of VRAM for the driver, the CUDA context and fragmentation.
    return int(min(free, gpu.memory_total_bytes * 0.9))


def low_battery(device: DeviceProfile) -> bool:
    b = device.battery
    return bool(
        device.on_battery and b and b.percent is not None and b.percent < LOW_BATTERY_PERCENT
    )


def decoding_threads(device: DeviceProfile) -> tuple[int, int, str]:
    """Threads for llama.cpp on ``device``: (decoding, prompt processing, why).

    Prompt processing is compute-bound and short: one thread per performance core
    (hyperthreads and efficiency cores only add contention). Decoding syncs its threads
    at every operation, hundreds of times a token, so a thread whose core another program
    takes stalls all the others: on 2 cores beside one busy process, 2 decode threads
    fell from 186 to 2.3 tok/s with llama.cpp's spinning waits, and sleeping waits
    (OMP_WAIT_POLICY=PASSIVE) cost 3.5x alone. One core is left to the rest of the
    machine instead (1 decode thread there: 162 tok/s alone, 164 beside the busy
    process), and threads spin only briefly before they sleep (GOMP_SPINCOUNT, set by
    both llama.cpp backends). Half of everything on battery below 20%.
    """
    perf = device.cores_performance or device.cores_logical or 1
    if low_battery(device):
        n = max(1, perf // 2)
        return n, n, f"{_threads(n)}: half of {perf} performance cores, on battery below 20%"
    decode = max(1, perf - 1)
    return (
        decode,
        perf,
        f"{_threads(decode)} decoding (one of {perf} performance cores left to the rest of "
        f"the machine), {_threads(perf)} for prompts",
    )


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def bandwidth_gbps(device: DeviceProfile, on_gpu: bool) -> float:
    if on_gpu:
        gpu = device.discrete_gpu
        if gpu and gpu.memory_bandwidth_gbps:
            return gpu.memory_bandwidth_gbps
    for g in device.gpus:
        if g.unified_memory and g.memory_bandwidth_gbps:
            return g.memory_bandwidth_gbps
    return device.memory_bandwidth_gbps or cpu_bandwidth_default()


# Effective multiply-adds per second of one CPU core in llama.cpp's quantized matrix-vector
# kernels (AVX2/NEON). Calibrated on this project's machine: SmolLM2-135M decodes at
# ~75 tok/s with llama-cpp-python on 2 threads, i.e. about 1e10 FLOP/s per core.
CPU_FLOPS_PER_CORE = 1e10


def expected_tg_tps(
    weights_bytes: int,
    bandwidth: float,
    params: float | None = None,
    cpu_threads: int | None = None,
) -> float:
    """Decode speed: every token reads all weights once (~60% of peak bandwidth).

    On a CPU small models are compute-bound instead (2 FLOP per parameter per token), so
    with ``params`` and ``cpu_threads`` the lower of the two limits is returned.
    """
    tps = bandwidth * 1e9 * 0.6 / max(weights_bytes, 1)
    if params and cpu_threads:
        tps = min(tps, cpu_threads * CPU_FLOPS_PER_CORE / (2 * params))
    return round(tps, 1)


def bits_per_weight(quant: str | None) -> float:
    return QUANT_BITS.get((quant or "").upper(), 4.85)
