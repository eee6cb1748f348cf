"""``locara serve`` (foreground) and ``locara start|stop|status`` (background).

The background server is the same ``locara serve`` process, detached, with its
output in ``$LOCARA_HOME/logs/server.log``. A state file (``run/server.json``: pid,
address, start time, status key) is written by the serving process itself and removed
when it exits, so ``status`` and ``stop`` always talk about a process that really ran.
The status key opens ``/api/status`` (only that route) on a server that requires API
tokens, so the file is readable by this user only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from locara.cli.common import echo_json, human_size, settings
from locara.errors import UsageError
from locara.procs import pid_alive
from locara.settings import Settings


def _read_state(cfg: Settings) -> dict[str, Any] | None:
    try:
        data = json.loads(cfg.server_pid_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _running(cfg: Settings) -> dict[str, Any] | None:
    state = _read_state(cfg)
    if state is None:
        return None
    if not pid_alive(int(state.get("pid", -1))):
        with contextlib.suppress(OSError):
            cfg.server_pid_path.unlink()  # a stale file from a crashed server
        return None
    return state


def _write_state(cfg: Settings, state: dict[str, Any]) -> None:
    # 0600 from the first byte (it holds the status key), and renamed into place, so a
    # reader never sees half a file and a link planted at the name is replaced, not followed.
    path = cfg.server_pid_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def run_server(cfg: Settings, host: str, port: int, policy: Path | None = None) -> None:
    """Serve in this process until interrupted."""
    import logging

    import uvicorn

    from locara.server.app import create_app
    from locara.server.config import ServerConfig
    from locara.server.tokens import TokenStore

    config = dataclasses.replace(
        ServerConfig.from_env(host, port), status_key=secrets.token_urlsafe(32)
    )
    if policy is not None:  # validated before anything listens
        from locara.router.policy import load_policy

        config = dataclasses.replace(config, policy=load_policy(policy, cfg))
    if not config.loopback and not TokenStore(cfg).records():
        raise UsageError(
            f"refusing to listen on {host} without API tokens: anyone on the network could "
            "use this machine's models",
            "create a token first (locara token create --app NAME), or bind 127.0.0.1",
        )
    running = _running(cfg)
    if running is not None and running.get("pid") != os.getpid():
        raise UsageError(
            f"a Locara server is already running (pid {running['pid']}, {running.get('address')})",
            "stop it with: locara stop",
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(cfg, config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            timeout_graceful_shutdown=5,
            server_header=False,
        )
    )
    state = {
        "pid": os.getpid(),
        "host": host,
        "port": port,
        "address": f"http://{host}:{port}",
        "started_at": time.time(),
        "log": str(cfg.server_log_path),
        "status_key": config.status_key,
    }
    _write_state(cfg, state)
    try:
        server.run()
    finally:
        if (_read_state(cfg) or {}).get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                cfg.server_pid_path.unlink()
    if not server.started:
        raise UsageError(
            f"the server could not start on {host}:{port} (is the port in use?)",
            "pick another port with --port, or stop the other server",
        )


@click.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1, LOCARA_HOST).")
@click.option("--port", type=int, default=None, help="Port (default 11435, LOCARA_PORT).")
@click.option(
    "--rpc",
    default=None,
    metavar="HOST:PORT,...",
    help="llama.cpp RPC workers (locara worker) that take model layers (LOCARA_RPC).",
)
@click.option(
    "--policy",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Router policy file (JSON/TOML) for requests to model 'auto' or the policy's name.",
)
def serve(host: str | None, port: int | None, rpc: str | None, policy: Path | None) -> None:
    """Run the OpenAI- and Ollama-compatible server in the foreground.

    \b
    Examples:
      locara serve
      LOCARA_KEEP_ALIVE=60 locara serve --port 8080
      locara serve --rpc 192.168.1.20:50052,192.168.1.21:50052
      locara serve --policy cascade.toml
    """
    cfg = settings()
    if rpc is not None:
        from dataclasses import replace

        from locara.backends.rpc import parse_endpoints

        cfg = replace(cfg, rpc=parse_endpoints(rpc))
    run_server(cfg, host or cfg.host, port or cfg.port, policy)


@click.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 11435).")
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait until it answers.",
)
def start(host: str | None, port: int | None, wait_s: float) -> None:
    """Start the server in the background (log in LOCARA_HOME/logs/server.log)."""
    import httpx

    cfg = settings()
    host = host or cfg.host
    port = port or cfg.port
    running = _running(cfg)
    if running is not None:
        click.echo(f"already running: pid {running['pid']} at {running['address']}")
        return
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path: Path = cfg.server_log_path
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "locara", "serve", "--host", host, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal that started it
        )
    url = f"http://{_client_host(host)}:{port}/health"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
            raise UsageError(
                "the server exited while starting:\n  " + "\n  ".join(tail),
                f"see {log_path}",
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                click.echo(f"started: pid {proc.pid} at http://{host}:{port} (log {log_path})")
                return
        time.sleep(0.2)
    raise UsageError(f"the server did not answer within {wait_s:.0f} s", f"see {log_path}")


@click.command()
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=15.0,
    show_default=True,
    help="Seconds to wait before killing it.",
)
def stop(timeout_s: float) -> None:
    """Stop the background server."""
    cfg = settings()
    state = _running(cfg)
    if state is None:
        click.echo("not running")
        return
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        click.echo(f"killed pid {pid} (it did not stop within {timeout_s:.0f} s)")
    else:
        click.echo(f"stopped pid {pid}")
    with contextlib.suppress(OSError):
        cfg.server_pid_path.unlink()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Show whether the server runs: pid, API address, uptime, requests served and their
    average generation speed (from the usage ledger), and each loaded model with its size.
    """
    import httpx

    cfg = settings()
    state = _running(cfg)
    if state is None:
        if as_json:
            echo_json({"running": False})
        else:
            click.echo("not running (start it with: locara start)")
        return
    key = state.pop("status_key", None)
    info: dict[str, Any] = {"running": True, **state, "uptime_s": time.time() - state["started_at"]}
    url = f"http://{_client_host(str(state['host']))}:{state['port']}/api/status"
    # The server's status key, else the user's own token: a server that requires tokens
    # answers /api/status to no one else.
    token = key or os.environ.get("LOCARA_API_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(url, timeout=3.0, headers=headers)
        body = r.json()
        if r.status_code == 200:
            info["requests"] = body.get("requests")
            info["loaded"] = body.get("loaded", [])
            info["served"] = _served_since(cfg, float(state["started_at"]))
        elif r.status_code == 401:
            info["error"] = (
                "the server requires an API token for its status; "
                "set LOCARA_API_TOKEN to one (locara token create --app NAME)"
            )
        else:
            hint = f" ({body['hint']})" if body.get("hint") else ""
            info["error"] = f"the server answered {r.status_code}: {body.get('error')}{hint}"
    except (httpx.HTTPError, ValueError) as exc:
        info["error"] = f"the server did not answer: {exc}"
    if as_json:
        echo_json(info)
        return
    up = int(info["uptime_s"])
    click.echo(f"running: pid {info['pid']}")
    click.echo(f"  API       {info['address']}/v1 (OpenAI), {info['address']}/api (Ollama)")
    click.echo(f"  uptime    {up // 3600}h{up % 3600 // 60:02d}m{up % 60:02d}s")
    if "error" in info:
        click.echo(f"  {info['error']}")
        return
    served = info["served"]
    speed = (
        f", avg {served['avg_tps']:.1f} tok/s over {served['generations']} generation(s)"
        if served["avg_tps"] is not None
        else ""
    )
    click.echo(f"  requests  {info['requests']}{speed}")
    loaded = info["loaded"]
    if not loaded:
        click.echo("  model     (none loaded)")
    for m in loaded:
        mode = "embedding" if m["embedding"] else "generation"
        quant = f" {m['quant']}" if m.get("quant") else ""
        click.echo(
            f"  model     {m['model']}{quant} ({human_size(m['size_bytes'])}; {mode}, "
            f"ctx {m['n_ctx']}, ~{human_size(m['estimated_bytes'])} in memory, "
            f"{m['in_flight']} in flight)"
        )


def _served_since(cfg: Settings, started_at: float) -> dict[str, Any]:
    """What the usage ledger recorded for API requests since the server started."""
    from locara.errors import LedgerError
    from locara.ledger.db import UsageDB

    try:
        rows = UsageDB(cfg.usage_db_path).rows(since=started_at)
    except LedgerError:
        rows = []  # status still shows what the server said; `locara usage` explains
    rows = [r for r in rows if r["surface"] != "cli"]
    tps = [float(r["generation_tps"]) for r in rows if r["generation_tps"]]
    return {
        "requests": len(rows),
        "generations": len(tps),
        "completion_tokens": sum(int(r["completion_tokens"] or 0) for r in rows),
        "avg_tps": sum(tps) / len(tps) if tps else None,
    }
