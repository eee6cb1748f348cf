"""``locara worker``: lend this machine's memory and cores to a model served elsewhere."""

from __future__ import annotations

import os
import sys

import click

from locara.errors import UsageError

_UNSAFE_FLAG = "--i-know-this-is-unauthenticated"


@click.command()
@click.option(
    "--listen",
    default="127.0.0.1:50052",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to listen on. Beyond loopback only with " + _UNSAFE_FLAG + ".",
)
@click.option("--threads", "-t", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("--cache", is_flag=True, help="Cache tensors on disk (faster reloads of a model).")
@click.option(
    _UNSAFE_FLAG,
    "unsafe",
    is_flag=True,
    help="Allow a non-loopback address: the RPC protocol has no authentication.",
)
def worker(listen: str, threads: int | None, cache: bool, unsafe: bool) -> None:
    """Run a llama.cpp RPC worker: a `locara serve --rpc HOST:PORT` elsewhere puts
    model layers here.

    The worker speaks llama.cpp's RPC protocol, which has no authentication and no
    encryption: anyone who can reach its port can use it. It listens on loopback
    unless you pass a LAN address and the flag that says you know this; prefer an
    SSH tunnel (ssh -L 50052:127.0.0.1:50052 host) to exposing it.

    \b
    Examples:
      locara worker                                   # 127.0.0.1:50052
      locara worker --listen 127.0.0.1:50053 -t 4
      ssh -N -L 50052:127.0.0.1:50052 gpu-box &  locara serve --rpc 127.0.0.1:50052
    """
    from locara.backends.llama_cpp import physical_cores
    from locara.backends.rpc import parse_endpoints, rpc_server_binary
    from locara.backends.worker_binary import locate_llama_server, worker_environment
    from locara.server.config import is_loopback

    (endpoint,) = parse_endpoints(listen) or ("",)
    if not endpoint or "," in listen:
        raise UsageError(f"invalid --listen {listen!r}", "give one address as HOST:PORT")
    host, _, port = endpoint.rpartition(":")
    if not is_loopback(host) and not unsafe:
        raise UsageError(
            f"refusing to listen on {host}: llama.cpp's RPC protocol has no authentication, "
            "so anyone who reaches the port can use this machine's worker",
            f"listen on 127.0.0.1 and reach it through an SSH tunnel, or add {_UNSAFE_FLAG} "
            "on a network you trust",
        )
    if threads is not None and threads < 1:
        raise UsageError(f"invalid --threads {threads}", "pass 1 or more threads")
    binary = locate_llama_server()
    rpc = rpc_server_binary(binary.path)
    argv = [str(rpc), "-H", host.strip("[]"), "-p", port, "-t", str(threads or physical_cores())]
    if cache:
        argv.append("-c")
    if not is_loopback(host):
        click.echo(f"warning: listening on {host}: the RPC protocol is unauthenticated", err=True)
    sys.stdout.flush()
    # The worker replaces this process: Ctrl-C and service managers reach it directly.
    os.execve(argv[0], argv, worker_environment(binary))
