"""Stop strings over a token stream: never emit a stop string, never emit text past it.

Text that could be the start of a stop string is held back until the next piece
shows whether it is one; at the end, held text is released.
"""

from __future__ import annotations


class StopScanner:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add ``piece``; return (text safe to emit, whether a stop string was hit)."""
        if not self.stops:
            return piece, False
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return text[:cut], True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self, tail: str = "") -> str:
        """Whatever is held back (the stream ended without completing a stop string)."""
        text, hit = self.feed(tail)
        if hit:
            return text
        out = text + self._held
        self._held = ""
        return out
