"""Where a model's layers go and whether they fit: RAM, unified memory or a discrete GPU.

``place()`` answers for one configuration (model shape, context tokens, KV type, batch):
how many layers go to the GPU, the bytes that land in RAM and on the GPU, and why it
does not fit when it does not. ``longest_context()`` walks contexts and KV types down
until one fits; ``parallel_slots()`` sees how many contexts fit at once. These are the
planner's arithmetic; ``locara.planner.plan`` decides.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from locara.device.fit import FitEstimate, ModelShape, cpu_repack_types, estimate_shape
from locara.device.profile import DeviceProfile
from locara.planner.budget import GiB

MIN_CTX = 512
# Parallel slots a CPU plan tries first (then halves until their KV fits). Measured on
# 2 cores with the bundled model, 16 clients x 64 tokens: 4 slots 10.8 s, 8 slots 6.9 s,
# 16 slots 7.2 s — beyond 8 the decode steps only grow, and each slot costs its KV.
MAX_SLOTS = 8
ALL_LAYERS = 2**31 - 1  # an explicit "all" (-1): clamped to the model's layer count


@dataclass(frozen=True)
class Room:
    """What one load may use, and how its layers may be placed."""

    ram: int  # bytes of RAM (or unified memory) a model may take
    vram: int | None  # bytes of a discrete GPU, None without one
    offload: bool  # the backend build can put layers on a GPU
    layers: int | None = None  # explicit GPU layers; None: as many as fit
    worker: bool = True  # llama-server is installed: llama.cpp generation can batch slots


@dataclass(frozen=True)
class Placement:
    ok: bool
    estimate: FitEstimate
    layers: int  # layers on the GPU (llama.cpp counts the output layer as one)
    ram_bytes: int  # what the memory admission rule counts against the RAM budget
    gpu_bytes: int  # what sits in GPU memory (all of it on unified memory)
    why_not: str = ""


def gb(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2**20:.0f} MiB"


def place(
    device: DeviceProfile,
    backend: str,
    shape: ModelShape,
    n_ctx: int,
    kv_type: str,
    n_batch: int,
    room: Room,
) -> Placement:
    """Does this configuration fit ``room``, and where do its layers go?

    ``n_ctx`` is every token the KV cache holds (context per slot × slots).
    """
    total_layers = shape.n_layers + 1
    gpu_est = estimate_shape(shape, n_ctx, kv_type, backend, n_batch)  # no CPU repack
    cpu_est = estimate_shape(
        shape,
        n_ctx,
        kv_type,
        backend,
        n_batch,
        repack_types=cpu_repack_types(device.arch, device.cpu_features),
    )
    ram = room.ram
    if backend == "mlx":
        # MLX has no layer split: the whole model runs on the Apple GPU, or on the CPU.
        need = gpu_est.total_bytes
        on_gpu = need if device.is_apple_silicon else 0
        why = "" if need <= ram else f"needs {gb(need)}, RAM budget {gb(ram)}"
        return Placement(need <= ram, gpu_est, 0, need, on_gpu, why)
    gpu_allowed = room.offload and room.layers != 0
    if gpu_allowed and device.is_apple_silicon and device.unified_memory:
        layers = total_layers if room.layers is None else min(room.layers, total_layers)
        est = _cpu_share_repacked(gpu_est, cpu_est, layers, total_layers)
        on_gpu = int((est.weights_bytes + est.kv_bytes) * layers / total_layers)
        on_gpu += est.compute_bytes
        if est.total_bytes <= ram:
            return Placement(True, est, layers, est.total_bytes, on_gpu)
        why = f"needs {gb(est.total_bytes)}, Metal budget {gb(ram)}"
        return Placement(False, est, 0, est.total_bytes, on_gpu, why)
    vram = room.vram
    if gpu_allowed and vram is not None:
        per_layer = (gpu_est.weights_bytes + gpu_est.kv_bytes) / total_layers
        if room.layers is None:
            gpu_need = gpu_est.weights_bytes + gpu_est.kv_bytes + gpu_est.compute_bytes
            if gpu_need <= vram and gpu_est.overhead_bytes <= ram:
                return Placement(True, gpu_est, total_layers, gpu_est.overhead_bytes, gpu_need)
            # Partial offload: whole layers (weights + their KV) go to the GPU until it is full.
            layers = max(0, int((vram - gpu_est.compute_bytes) // per_layer))
            layers = min(layers, shape.n_layers)
        else:
            layers = min(room.layers, total_layers)
        est = _cpu_share_repacked(gpu_est, cpu_est, layers, total_layers)
        on_gpu = int(layers * per_layer)
        host = est.total_bytes - on_gpu
        if on_gpu + est.compute_bytes > vram:
            why = (
                f"{layers} GPU layers need {gb(on_gpu + est.compute_bytes)}, "
                f"more than the GPU's {gb(vram)}"
            )
            return Placement(False, est, 0, host, on_gpu + est.compute_bytes, why)
        if host <= ram:
            return Placement(True, est, layers, host, on_gpu + est.compute_bytes)
        why = (
            f"needs {gb(est.total_bytes)}: {layers} layers fit the GPU's {gb(vram)}, "
            f"the other {gb(host)} exceed the RAM budget {gb(ram)}"
        )
        return Placement(False, est, 0, host, on_gpu + est.compute_bytes, why)
    need = cpu_est.total_bytes
    why = "" if need <= ram else f"needs {gb(need)}, RAM budget {gb(ram)}"
    return Placement(need <= ram, cpu_est, 0, need, 0, why)


def _cpu_share_repacked(
    gpu_est: FitEstimate, cpu_est: FitEstimate, layers: int, total_layers: int
) -> FitEstimate:
    # Layers left on the CPU are repacked there (a second copy of their weights).
    cpu_share = 1 - layers / total_layers
    return replace(gpu_est, repack_bytes=int(cpu_est.repack_bytes * cpu_share))


@dataclass(frozen=True)
class Fitted:
    """The longest context (and least quantized KV) that fits, or the failing attempt."""

    n_ctx: int
    kv_type: str
    n_batch: int
    placement: Placement

    @property
    def ok(self) -> bool:
        return self.placement.ok


def longest_context(
    device: DeviceProfile,
    backend: str,
    shape: ModelShape,
    want: int,
    room: Room,
    kv_types: tuple[str, ...],
    embedding: bool,
    n_batch: int | None,
) -> tuple[Fitted, str]:
    """Try ``want`` tokens with each KV type, then half the context, down to MIN_CTX.

    Returns the first configuration that fits, else the first one tried and why even
    the smallest one does not fit. An embedding load evaluates an input in one batch,
    so its batch is its context unless ``n_batch`` says otherwise.
    """

    def batch(ctx: int) -> int:
        return n_batch or (ctx if embedding else 512)

    ctx = want
    first: Fitted | None = None
    while True:
        for kv in kv_types:
            p = place(device, backend, shape, ctx, kv, batch(ctx), room)
            attempt = Fitted(ctx, kv, batch(ctx), p)
            if p.ok:
                return attempt, ""
            if first is None:
                first = attempt
        if ctx <= MIN_CTX:
            break
        ctx = max(MIN_CTX, ctx // 2)
    assert first is not None
    low = min(want, MIN_CTX)
    smallest = place(device, backend, shape, low, kv_types[-1], batch(low), room)
    why = (
        f"does not fit at any context: at {want} tokens {first.placement.why_not}; "
        f"even {low} tokens with {kv_types[-1]} KV needs {gb(smallest.estimate.total_bytes)}"
    )
    return Fitted(low, kv_types[-1], batch(low), smallest), why


def parallel_slots(
    device: DeviceProfile,
    backend: str,
    shape: ModelShape,
    fitted: Fitted,
    room: Room,
    asked: int | None,
    embedding: bool,
) -> tuple[int, Placement, str]:
    """Contexts served at once, the placement with all their KV, and why that many.

    llama.cpp generation on the CPU gets up to MAX_SLOTS when the KV cache of that many
    contexts fits the budget too; embeddings, MLX and GPU plans get one (on a GPU the
    memory goes to layers and context first). ``asked`` (an explicit number) is honoured
    as far as it fits. Slots never push layers off the GPU.
    """
    p = fitted.placement
    room = replace(room, layers=p.layers)

    def fit(n: int) -> Placement:
        if n == 1:
            return p
        tokens = fitted.n_ctx * n
        return place(device, backend, shape, tokens, fitted.kv_type, fitted.n_batch, room)

    if embedding:
        return 1, p, "1 slot: an embedding load computes one input at a time"
    if backend == "llama_cpp" and not room.worker:
        return 1, p, "1 slot: llama.cpp in process runs one request at a time"
    if asked is None:
        if backend != "llama_cpp":
            return 1, p, "1 slot: the MLX backend runs one request at a time"
        if p.gpu_bytes:
            return 1, p, "1 slot: on the GPU, memory goes to layers and context first"
    n = asked or MAX_SLOTS
    while n > 1 and not fit(n).ok:
        n //= 2
    placed = fit(n)
    if asked is not None:
        short = f" ({asked} do not fit the budget)" if n < asked else ""
        return n, placed, f"{n} parallel slot{'s' if n > 1 else ''}: asked for by the caller{short}"
    if n == 1:
        return 1, p, "1 slot: the KV cache of a second context does not fit the budget"
    why = (
        f"{n} parallel slots of {fitted.n_ctx} tokens: the KV cache of {n} contexts "
        f"({gb(placed.estimate.kv_bytes)}) fits the budget"
    )
    return n, placed, why


def offload_notes(
    device: DeviceProfile,
    backend: str,
    shape: ModelShape,
    fitted: Fitted,
    room: Room,
    asked: int | None,
    model_id: str,
) -> tuple[list[str], list[str], list[str]]:
    """(reasons, warnings, overrides) saying where the layers went, and why not elsewhere."""
    reasons: list[str] = []
    warnings: list[str] = []
    overrides: list[str] = []
    if backend == "mlx":
        if device.is_apple_silicon:
            reasons.append("MLX runs the whole model on the Apple GPU (unified memory)")
        return reasons, warnings, overrides
    total = shape.n_layers + 1
    layers = fitted.placement.layers
    where = "Metal" if device.is_apple_silicon else "the GPU"
    has_gpu = room.vram is not None or (device.is_apple_silicon and device.unified_memory)
    f = fitted
    auto_room = replace(room, layers=None, offload=True)
    auto = place(device, backend, shape, f.n_ctx, f.kv_type, f.n_batch, auto_room).layers
    if asked not in (None, 0) and not has_gpu:
        warnings.append(f"GPU layers {asked} ignored: no GPU was found on this device")
    elif asked not in (None, 0) and not room.offload:
        warnings.append(
            f"GPU layers {asked} ignored: this llama.cpp build has no GPU backend "
            "(llama_supports_gpu_offload() is false); every layer runs on the CPU"
        )
    elif has_gpu and not room.offload and asked is None and auto > 0:
        warnings.append(
            "this llama.cpp build has no GPU backend (llama_supports_gpu_offload() is false): "
            f"every layer runs on the CPU instead of {auto}/{total} on {where}; "
            "install a llama-cpp-python built for this GPU to offload"
        )
    if asked is not None and has_gpu and room.offload and asked > total:
        warnings.append(
            f"GPU layers {asked} is more than {model_id}'s {total} layers; clamped to {total}"
        )
    if asked is not None and has_gpu and room.offload:
        overrides.append(
            f"{layers}/{total} layers on {where}: set explicitly "
            f"(the plan would offload {auto}/{total})"
        )
    elif layers > 0:
        reasons.append(f"{layers}/{total} layers offloaded to {where}")
    return reasons, warnings, overrides
