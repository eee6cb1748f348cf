"""llama.cpp's RPC workers: one model's layers across several machines.

A worker is llama.cpp's ``ggml-rpc-server`` (built by ``scripts/install.sh`` beside
llama-server) started by ``locara worker``. The llama-server worker that runs a model
gets ``--rpc host:port,...`` and offloads layers to them as if they were GPUs; llama.cpp
splits the offloaded layers between them by their free memory.

Before a plan counts a worker's memory, Locara asks the worker itself with the RPC
protocol's first messages (HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY): it learns the
protocol version (a worker of another llama.cpp build is refused here, with both
versions, instead of failing inside llama-server) and each device's free memory.

The protocol has no authentication and no encryption: anyone who reaches the port can
run code paths of the worker with chosen inputs. Workers bind to loopback unless told
otherwise, explicitly.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from locara.errors import BackendUnavailableError, UsageError

# ggml-rpc.h of the pinned llama.cpp (worker_binary.LLAMA_CPP_COMMIT): RPC_PROTO_MAJOR/MINOR.
# A worker must speak the same major and no newer minor (llama.cpp's own rule).
RPC_PROTO = (7, 0)
DEFAULT_PORT = 50052
PROBE_TIMEOUT_S = 3.0

_CMD_GET_DEVICE_MEMORY = 11
_CMD_HELLO = 14
_CMD_DEVICE_COUNT = 15
_CONN_CAPS = 24  # bytes of transport capabilities in HELLO; zeros: plain TCP


@dataclass(frozen=True)
class RpcWorker:
    """What a running worker said about itself."""

    endpoint: str  # host:port
    version: tuple[int, int, int]
    free_bytes: int  # summed over its devices
    total_bytes: int


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``host:port,host:port`` (spaces allowed) as normalized endpoints; UsageError if not."""
    out: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(
                f"invalid RPC worker address {item!r}",
                "give workers as host:port, comma-separated (e.g. 127.0.0.1:50052)",
            )
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if endpoint not in out:
            out.append(endpoint)
    return tuple(out)


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ConnectionError("the worker closed the connection")
        buf += part
    return buf


def _call(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != reply_size:
        raise ConnectionError(f"unexpected reply of {size} bytes to command {cmd}")
    return _recv_exact(sock, size)


def probe(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> RpcWorker:
    """Ask the worker at ``endpoint`` for its version and memory; BackendUnavailableError
    (what failed, what to do) when it cannot be used."""
    host, port = _split(endpoint)
    fix = (
        f"start it there with: locara worker --listen {endpoint}, "
        "or leave it out of --rpc / LOCARA_RPC"
    )
    connected = False
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            connected = True
            sock.settimeout(timeout_s)
            hello = _call(sock, _CMD_HELLO, bytes(_CONN_CAPS), 4 + _CONN_CAPS)
            version = (hello[0], hello[1], hello[2])
            if version[0] != RPC_PROTO[0] or version[1] > RPC_PROTO[1]:
                mine = ".".join(map(str, RPC_PROTO))
                raise BackendUnavailableError(
                    f"RPC worker {endpoint} speaks RPC protocol "
                    f"{'.'.join(map(str, version))}; this Locara's llama.cpp speaks {mine}",
                    "run the same Locara version on every machine (locara worker there)",
                )
            (count,) = struct.unpack("<I", _call(sock, _CMD_DEVICE_COUNT, b"", 4))
            free = total = 0
            for device in range(count):
                f, t = struct.unpack(
                    "<QQ", _call(sock, _CMD_GET_DEVICE_MEMORY, struct.pack("<I", device), 16)
                )
                free, total = free + f, total + t
    except TimeoutError:
        if not connected:
            # Nothing took the connection (a busy worker still would): a machine or a
            # link is down, or a firewall drops the packets.
            raise BackendUnavailableError(
                f"RPC worker {endpoint} is unreachable: no connection within "
                f"{timeout_s:.0f} s (is the machine up and its address reachable from here?)",
                fix,
            ) from None
        raise BackendUnavailableError(
            f"RPC worker {endpoint} did not answer within {timeout_s:.0f} s "
            "(a worker serves one client at a time: is another server using it?)",
            fix,
        ) from None
    except (OSError, ConnectionError, struct.error) as exc:
        raise BackendUnavailableError(f"RPC worker {endpoint} is unreachable: {exc}", fix) from None
    return RpcWorker(endpoint, version, free, total)


def rpc_server_binary(llama_server: Path) -> Path:
    """``ggml-rpc-server``: install.sh builds it beside llama-server."""
    path = llama_server.parent / "ggml-rpc-server"
    if not path.is_file():
        raise BackendUnavailableError(
            f"no ggml-rpc-server beside {llama_server}",
            "run ./scripts/install.sh (it builds llama-server and the RPC worker)",
        )
    return path
