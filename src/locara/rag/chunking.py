"""Text that remembers where it came from, and chunks cut from it with byte offsets.

A ``TextView`` is text plus, for each character, the byte range it was read from in
the source document. Chunking works on views, so every chunk knows the exact byte range
``[start, end)`` of the original file it covers: decoding never moves an offset (CRLF
and multi-byte UTF-8 stay as they were), and HTML entities and markup are accounted for
by the extractor that built the view. Views stream: a 200 MB text file is chunked one
block at a time, never read whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Offsets = npt.NDArray[np.int64]

# Where a chunk prefers to end, best first: a paragraph, a sentence, a line, a word.
_BREAKS = (
    re.compile(r"\n\s*\n"),
    re.compile(r"[.!?][\"')\]]?\s"),
    re.compile(r"\n"),
    re.compile(r"\s"),
)


@dataclass(frozen=True)
class ChunkConfig:
    """Chunk size and overlap in characters (tuned on the dev split of bench/rag.py)."""

    size: int = 1200
    overlap: int = 150

    def __post_init__(self) -> None:
        if self.size < 50 or not 0 <= self.overlap < self.size // 2:
            raise ValueError("chunk size must be >= 50 and overlap in [0, size/2)")


@dataclass(frozen=True)
class TextView:
    """``text`` whose character ``i`` came from source bytes ``[starts[i], ends[i])``.

    Characters the extractor inserted (a space between two HTML elements) are empty
    ranges at the position of what follows them.
    """

    text: str
    starts: Offsets
    ends: Offsets

    @classmethod
    def empty(cls) -> TextView:
        z = np.zeros(0, dtype=np.int64)
        return cls("", z, z)

    @classmethod
    def of_utf8(cls, text: str, base: int) -> TextView:
        """``text`` decoded from UTF-8 bytes that began at byte ``base`` of the source."""
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        lens = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
        ends = base + np.cumsum(lens, dtype=np.int64)
        return cls(text, ends - lens, ends)

    @classmethod
    def inserted(cls, text: str, at: int) -> TextView:
        pos = np.full(len(text), at, dtype=np.int64)
        return cls(text, pos, pos)

    def __len__(self) -> int:
        return len(self.text)

    def slice(self, a: int, b: int | None = None) -> TextView:
        return TextView(self.text[a:b], self.starts[a:b], self.ends[a:b])

    @staticmethod
    def join(views: list[TextView]) -> TextView:
        views = [v for v in views if len(v)]
        if not views:
            return TextView.empty()
        if len(views) == 1:
            return views[0]
        return TextView(
            "".join(v.text for v in views),
            np.concatenate([v.starts for v in views]),
            np.concatenate([v.ends for v in views]),
        )


@dataclass(frozen=True)
class TextChunk:
    """A chunk: its text, the source bytes ``[start, end)`` it covers, its ordinal."""

    ordinal: int
    text: str
    start: int
    end: int


def chunk_views(views: Iterable[TextView], config: ChunkConfig) -> Iterator[TextChunk]:
    """Chunks of about ``config.size`` characters, cut at the best break near the end,
    each overlapping the previous one by about ``config.overlap`` characters."""
    buf = TextView.empty()
    ordinal = 0
    lookahead = config.size + config.size // 2
    for view in views:
        buf = TextView.join([buf, view])
        pos = 0
        while len(buf) - pos >= lookahead:
            cut = pos + _cut(buf.text[pos : pos + config.size])
            chunk = _make(buf, pos, cut, ordinal)
            if chunk is not None:
                yield chunk
                ordinal += 1
            pos = _next_start(buf.text, pos, cut, config.overlap)
        buf = buf.slice(pos)
    pos = 0
    while pos < len(buf):
        rest = buf.text[pos:]
        cut = pos + (len(rest) if len(rest) <= config.size else _cut(rest[: config.size]))
        chunk = _make(buf, pos, cut, ordinal)
        if chunk is not None:
            yield chunk
            ordinal += 1
        if cut >= len(buf):
            break
        pos = _next_start(buf.text, pos, cut, config.overlap)


def _cut(window: str) -> int:
    """Where to end a chunk in ``window``: the last good break in its final 40 %."""
    floor = int(len(window) * 0.6)
    for pattern in _BREAKS:
        last = None
        for m in pattern.finditer(window, floor):
            last = m.end()
        if last is not None:
            return last
    return len(window)


def _next_start(text: str, pos: int, cut: int, overlap: int) -> int:
    """The next chunk starts ``overlap`` characters back, at a word's beginning."""
    if overlap == 0:
        return cut
    back = max(pos + 1, cut - overlap)
    m = re.compile(r"\s\S").search(text, back, cut)
    return m.start() + 1 if m else cut


def _make(buf: TextView, a: int, b: int, ordinal: int) -> TextChunk | None:
    text = buf.text[a:b]
    lead = len(text) - len(text.lstrip())
    body = text.strip()
    if not body:
        return None
    first, last = a + lead, a + lead + len(body) - 1
    return TextChunk(ordinal, body, int(buf.starts[first]), int(buf.ends[last]))
