"""From a document's bytes to ``TextView``s whose offsets point into those bytes.

Plain text and Markdown are decoded as UTF-8 block by block (strictly: a file that is
not UTF-8 text is refused, not indexed as mojibake). HTML is parsed with the standard
library's parser, keeping the byte range of every piece of text and entity. A PDF's
bytes hold compressed streams, not text, so no offset into them can be quoted: pypdf
extracts its text, the extracted text is stored and hashed as a document of its own
(derived from the PDF's digest), and citations point into it, with page numbers.
"""

from __future__ import annotations

import codecs
import html
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from locara.errors import UsageError
from locara.rag.chunking import TextView

BLOCK = 1 << 20
VIEW_CHARS = 1 << 16
KINDS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
SUPPORTED = ", ".join(sorted(KINDS))
PAGE_BREAK = "\n\f\n"  # between the pages of a PDF's extracted text


class DocumentError(UsageError):
    """A document Locara will not index: its type, its bytes, its size."""


def kind_of(path: Path) -> str:
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise DocumentError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}",
            f"supported types: {SUPPORTED}; convert it to one of them first",
        )
    return kind


@dataclass(frozen=True)
class PdfText:
    """A PDF's extracted text, as UTF-8, and the byte offset where each page begins."""

    data: bytes
    page_starts: tuple[int, ...]


def text_views(path: Path, read: Iterator[bytes]) -> Iterator[TextView]:
    """The text of a plain-text or Markdown document, one block's view at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    base = 0  # the source byte where the next decoded text begins
    seen_text = False
    try:
        for block in read:
            text = decoder.decode(block)
            if "\x00" in text:
                raise _not_text(path, "it holds NUL bytes")
            seen_text = seen_text or bool(text.strip())
            # Offsets cost 16 bytes a character: map a block a slice at a time.
            for i in range(0, len(text), VIEW_CHARS):
                piece = text[i : i + VIEW_CHARS]
                yield TextView.of_utf8(piece, base)
                base += len(piece.encode("utf-8"))
        yield TextView.of_utf8(decoder.decode(b"", final=True), base)
    except UnicodeDecodeError as exc:
        raise _not_text(path, f"byte {base + exc.start} is not UTF-8") from None
    if not seen_text:
        raise DocumentError(f"{path}: holds no text", "add a document with some text in it")


def _not_text(path: Path, why: str) -> DocumentError:
    return DocumentError(
        f"{path}: not UTF-8 text ({why})",
        "convert it to UTF-8 (iconv -t UTF-8), or give it the right extension",
    )


def html_view(path: Path, data: bytes) -> TextView:
    """The visible text of an HTML document, each character mapped to its source bytes."""
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_text(path, f"byte {exc.start} is not UTF-8") from None
    whole = TextView.of_utf8(source, 0)
    parser = _HTMLText(source, whole)
    parser.feed(source)
    parser.close()
    view = TextView.join(parser.views)
    if not view.text.strip():
        raise DocumentError(f"{path}: holds no visible text", "add a page with some text in it")
    return view


class _HTMLText(HTMLParser):
    _HIDDEN = frozenset({"script", "style", "template", "noscript"})
    _ENTITY = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);?")

    def __init__(self, source: str, whole: TextView) -> None:
        super().__init__(convert_charrefs=False)
        self.source = source
        self.whole = whole
        self.views: list[TextView] = []
        self.hidden = 0
        self.last_end = 0  # char offset where the previous piece of text ended
        line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self.line_starts = np.asarray(line_starts, dtype=np.int64)

    def _here(self) -> int:
        line, col = self.getpos()
        return int(self.line_starts[line - 1]) + col

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self.hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self.hidden:
            self.hidden -= 1

    def handle_data(self, data: str) -> None:
        at = self._here()
        self._piece(at, at + len(data), data)

    def handle_entityref(self, name: str) -> None:
        self._entity()

    def handle_charref(self, name: str) -> None:
        self._entity()

    def _entity(self) -> None:
        at = self._here()
        m = self._ENTITY.match(self.source, at)
        if m is not None:
            self._piece(at, m.end(), html.unescape(m.group(0)))

    def _piece(self, a: int, b: int, text: str) -> None:
        if self.hidden or a >= b:
            return
        if a != self.last_end and self.views:
            # Markup between two pieces separates words ("<p>one</p><p>two</p>").
            self.views.append(TextView.inserted(" ", int(self.whole.starts[a])))
        if text == self.source[a:b]:
            self.views.append(self.whole.slice(a, b))
        else:  # an entity: one character (or a few) for the whole reference
            start, end = int(self.whole.starts[a]), int(self.whole.ends[b - 1])
            n = len(text)
            self.views.append(
                TextView(text, np.full(n, start, dtype=np.int64), np.full(n, end, dtype=np.int64))
            )
        self.last_end = b


def pdf_text(path: Path, data: bytes) -> PdfText:
    """The text pypdf extracts from each page, joined with a page break."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError(
                f"{path}: the PDF is encrypted", "decrypt it first (qpdf --decrypt IN OUT)"
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        if isinstance(exc, DocumentError):
            raise
        raise DocumentError(
            f"{path}: not a readable PDF ({type(exc).__name__}: {exc})",
            "check the file opens in a PDF viewer, or export it again",
        ) from None
    if not any(p.strip() for p in pages):
        raise DocumentError(
            f"{path}: the PDF has no extractable text (scanned pages?)",
            "OCR it to text first (e.g. ocrmypdf), then add the result",
        )
    starts: list[int] = []
    parts: list[bytes] = []
    offset = 0
    for i, page in enumerate(pages):
        chunk = (PAGE_BREAK if i else "") + page
        encoded = chunk.encode("utf-8", "replace")
        starts.append(offset + (len(PAGE_BREAK.encode()) if i else 0))
        parts.append(encoded)
        offset += len(encoded)
    return PdfText(b"".join(parts), tuple(starts))
