"""Run Locara's CLI with an audit hook that refuses and records non-loopback connects.

``python tests/egress_guard.py serve ...``: every ``socket.connect`` (and DNS lookup) to
an address outside 127.0.0.0/8 and ::1 is appended to the file named by EGRESS_LOG and
fails with PermissionError, so a byte that would leave the machine never does. Unix
sockets (the llama-server worker's, if any) are not network egress and pass.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any


def _loopback(host: object) -> bool:
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    host: object = None
    if event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
    elif event == "socket.getaddrinfo":
        host = args[0]
    else:
        return
    if not _loopback(host):
        with open(os.environ["EGRESS_LOG"], "a", encoding="utf-8") as f:
            f.write(f"{event} {host}\n")
        raise PermissionError(f"egress guard: {event} to {host} refused")


if __name__ == "__main__":
    sys.addaudithook(_hook)
    from locara.cli.main import main

    sys.argv = ["locara", *sys.argv[1:]]
    sys.exit(main())
