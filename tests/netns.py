"""Linux network namespaces as small machines with their own addresses, for tests (root only).

``namespaces(n)`` makes a bridge in this (the root) namespace with address ``10.77.X.1/24``
and ``n`` namespaces, each joined to the bridge by a veth pair whose inner end (``eth0``)
has ``10.77.X.2``, ``10.77.X.3``, ... — so each namespace reaches the host and the others
on one subnet, no routes needed. ``X`` is a subnet no interface here uses yet. Names carry
this process's id (hex), so a run that crashed leaves nothing a later run trips over; a
later run deletes what dead runs left. Everything is deleted when the block ends, even on
failure.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import psutil

_NS_PREFIX = "locara-t"  # + pid (hex) - run - index
_BRIDGE_PREFIX = "lcb"  # + pid (hex) - run: at most 15 characters with the veths' "lch"
_runs = itertools.count()


class NamespacesUnavailable(Exception):
    """Why this machine (or user) cannot make network namespaces; a test skips with it."""


@dataclass(frozen=True)
class Namespaces:
    names: tuple[str, ...]
    addresses: tuple[str, ...]  # each namespace's eth0 (the bridge has 10.77.X.1)

    def exec_argv(self, index: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``index``."""
        return ["ip", "netns", "exec", self.names[index], *argv]

    def set_link(self, index: int, up: bool) -> None:
        """Take namespace ``index``'s only link to the others down (or up again)."""
        _ip("-n", self.names[index], "link", "set", "eth0", "up" if up else "down")


def _ip(*args: str) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise NamespacesUnavailable(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")
    return r.stdout


def _owner_gone(name: str, prefix: str) -> bool:
    m = re.fullmatch(re.escape(prefix) + r"([0-9a-f]+)-\d+(-\d+)?", name)
    return m is not None and not psutil.pid_exists(int(m.group(1), 16))


def _delete_leftovers() -> None:
    """Namespaces and bridges of runs whose process is gone (their veths go with them)."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        if _owner_gone(name, _NS_PREFIX):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    for name in re.findall(r"^\d+: ([^:@]+)", _ip("-o", "link", "show", "type", "bridge"), re.M):
        if _owner_gone(name, _BRIDGE_PREFIX):
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)


def _free_subnet() -> str:
    used = _ip("-4", "-o", "addr", "show") + _ip("-4", "route", "show", "table", "all")
    for x in range(256):
        if f"10.77.{x}." not in used:
            return f"10.77.{x}"
    raise NamespacesUnavailable("every 10.77.X.0/24 subnet is in use here")


@contextmanager
def namespaces(count: int) -> Iterator[Namespaces]:
    """``count`` namespaces on one bridge; NamespacesUnavailable when not root or no ``ip``."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise NamespacesUnavailable("network namespaces need root")
    if shutil.which("ip") is None:
        raise NamespacesUnavailable("no `ip` command (install iproute2)")
    _delete_leftovers()
    stem = f"{os.getpid():x}-{next(_runs)}"
    bridge = f"{_BRIDGE_PREFIX}{stem}"
    subnet = _free_subnet()
    names = tuple(f"{_NS_PREFIX}{stem}-{i}" for i in range(count))
    with ExitStack() as cleanup:
        _ip("link", "add", bridge, "type", "bridge")
        cleanup.callback(subprocess.run, ["ip", "link", "del", bridge], capture_output=True)
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, name in enumerate(names):
            _ip("netns", "add", name)
            # Deleting the namespace deletes its eth0, and with it the peer on the bridge.
            cleanup.callback(subprocess.run, ["ip", "netns", "del", name], capture_output=True)
            outer = f"lch{stem}{i}"
            _ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("link", "set", outer, "master", bridge, "up")
            _ip("-n", name, "addr", "add", f"{subnet}.{i + 2}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
        addresses = tuple(f"{subnet}.{i + 2}" for i in range(count))
        yield Namespaces(names, addresses)
