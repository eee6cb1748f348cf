"""Material for the RAG tests: a PDF writer and a network guard for subprocesses."""

from __future__ import annotations

from pathlib import Path


def make_pdf(pages: list[str]) -> bytes:
    """A minimal PDF with one line of Helvetica text per page (pypdf extracts it back)."""
    objs = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    kids = []
    for i, text in enumerate(pages):
        page_id, content_id = 4 + 2 * i, 5 + 2 * i
        kids.append(f"{page_id} 0 R")
        esc = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({esc}) Tj ET".encode("latin-1")
        objs[content_id] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
        objs[page_id] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
            "/Resources << /Font << /F1 3 0 R >> >> >>"
        ).encode()
    objs[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for k in sorted(objs):
        offsets[k] = len(out)
        out += b"%d 0 obj\n" % k + objs[k] + b"\nendobj\n"
    xref = len(out)
    size = max(objs) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for k in range(1, size):
        out += b"%010d 00000 n \n" % offsets[k]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


# Loaded by every Python process started with this directory on PYTHONPATH: an audit
# hook that logs and refuses any connection, DNS lookup or datagram to a non-loopback
# address. AF_UNIX and 127.0.0.0/8 / ::1 stay allowed (a llama-server worker is local).
_GUARD = """
import os, socket, sys

_LOG = os.environ["RAG_EGRESS_LOG"]
_LOCAL = ("127.", "::1", "localhost")


def _blocked(what, where):
    with open(_LOG, "a") as f:
        f.write(f"{os.getpid()} {what} {where!r}\\n")
    raise PermissionError(f"egress blocked by the test guard: {what} {where!r}")


def _hook(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, addr = args[0], args[-1]
        if sock.family == socket.AF_UNIX or addr is None:
            return
        host = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        if not host.startswith(_LOCAL):
            _blocked(event, addr)
    elif event == "socket.getaddrinfo":
        host = args[0]
        if host is not None and not str(host).startswith(_LOCAL) and host not in ("", b""):
            _blocked(event, host)


sys.addaudithook(_hook)
"""


def install_egress_guard(directory: Path) -> Path:
    """Write the guard as ``sitecustomize.py`` in ``directory``; the log file it writes."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_GUARD)
    return directory / "egress.log"
