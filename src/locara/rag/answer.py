"""Answers from retrieved chunks, and citations that are checked before they are shown.

The model sees the chunks as numbered sources and is asked to cite them as ``[n]``. A
citation is never the model's own text: it is a sentence of a retrieved chunk, chosen
for each sentence of the answer (the one the model pointed at with ``[n]``, else the
source sentence sharing most of its words), and quoted as the bytes ``[start, end)`` of
the hashed document. ``verify`` re-reads those bytes from the document store and
re-hashes the document; an answer is shown as sourced only when every citation
verifies and every ``[n]`` names a real source.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from locara.backends.base import Message
from locara.errors import IntegrityError, InvalidReferenceError
from locara.rag.docstore import DocumentStore
from locara.rag.search import Hit

INSTRUCTIONS = (
    "Answer the question using only the numbered sources below. After each sentence, "
    "cite the source it comes from by its number in square brackets, like [1]. If the "
    "sources do not contain the answer, say that you do not know."
)
_MARKER = re.compile(r"\[(\d{1,3})\]")
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)", re.MULTILINE)
# An answer's sentence keeps the markers that follow its full stop: "... Cologne. [1]".
_ANSWER_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+(?:\s*\[\d{1,3}\])*|$)", re.MULTILINE)
_WORD = re.compile(r"\w+")
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "which",
        "with",
        "what",
        "who",
        "how",
        "why",
        "when",
        "where",
        "do",
        "does",
        "did",
        "not",
        "no",
        "can",
    ]
)
MIN_OVERLAP = 0.5  # share of an answer sentence's words a source sentence must hold


@dataclass(frozen=True)
class Citation:
    """A verbatim span of a hashed document: ``quote`` is its bytes ``[start, end)``.

    ``n`` is the number of the retrieved source it quotes (the model's ``[n]``).
    """

    n: int
    path: str
    sha256: str
    start: int
    end: int
    quote: str
    page: int | None = None
    verified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Citation:
        try:
            return cls(
                n=int(d.get("n", 0)),
                path=str(d["path"]),
                sha256=str(d["sha256"]),
                start=int(d["start"]),
                end=int(d["end"]),
                quote=str(d["quote"]),
                page=None if d.get("page") is None else int(d["page"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidReferenceError(
                f"not a citation: {exc}",
                "pass citations as `locara rag ask --json` prints them "
                "(path, sha256, start, end, quote)",
            ) from None


@dataclass
class Answer:
    text: str
    citations: list[Citation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why a citation did not resolve

    @property
    def sourced(self) -> bool:
        """Shown as sourced only if it cites something and every citation checked out."""
        return (
            bool(self.citations) and not self.problems and all(c.verified for c in self.citations)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "sourced": self.sourced,
            "citations": [c.to_dict() for c in self.citations],
            "problems": self.problems,
        }


def build_messages(question: str, hits: list[Hit]) -> tuple[Message, ...]:
    """The chat message for an answer from ``hits``: instructions, sources, question.

    One user turn holds all three: small models follow sources there far more often
    than in a system prompt.
    """
    sources = "\n\n".join(f"[{i}] {' '.join(h.chunk.text.split())}" for i, h in enumerate(hits, 1))
    return (Message("user", f"{INSTRUCTIONS}\n\nSources:\n\n{sources}\n\nQuestion: {question}"),)


def cite(answer: str, hits: list[Hit], store: DocumentStore) -> Answer:
    """The answer with its citations found, quoted from the documents, and verified."""
    spans = [_sentences(store, h) for h in hits]
    out = Answer(answer)
    chosen: dict[tuple[str, int, int], Citation] = {}
    for sentence in _ANSWER_SENTENCE.findall(answer):
        named = [int(m) for m in _MARKER.findall(sentence)]
        for n in named:
            if not 1 <= n <= len(hits):
                out.problems.append(f"[{n}] names no source (there are {len(hits)})")
        valid = [n - 1 for n in named if 1 <= n <= len(hits)]
        words = _content_words(_MARKER.sub("", sentence))
        if not words:
            continue
        pool = valid or range(len(hits))
        best: tuple[float, int, tuple[int, int, str]] | None = None
        for i in pool:
            for span in spans[i]:
                score = len(words & _content_words(span[2])) / len(words)
                if best is None or score > best[0]:
                    best = (score, i, span)
        if best is None or (not valid and best[0] < MIN_OVERLAP) or best[0] == 0:
            continue
        _, i, (start, end, quote) = best
        doc = hits[i].chunk.document
        key = (doc.cite_sha256, start, end)
        if key not in chosen:
            # Numbered as the source it quotes, so an answer's [n] names its citations.
            chosen[key] = Citation(
                i + 1, doc.path, doc.cite_sha256, start, end, quote, hits[i].chunk.page
            )
    verified: dict[str, bool] = {}
    for c in sorted(chosen.values(), key=lambda c: (c.n, c.start)):
        ok, problem = verify(store, c, verified)
        out.citations.append(Citation(**{**asdict(c), "verified": ok}))
        if problem:
            out.problems.append(problem)
    return out


def verify(
    store: DocumentStore, c: Citation, hashed: dict[str, bool] | None = None
) -> tuple[bool, str | None]:
    """(True, None) if ``c.quote`` is exactly bytes ``[start, end)`` of document
    ``c.sha256`` and the stored document still hashes to that digest; else why not."""
    hashed = {} if hashed is None else hashed
    try:
        if c.sha256 not in hashed:
            store.verify(c.sha256)
            hashed[c.sha256] = True
        if not 0 <= c.start < c.end:
            return False, f"citation {c.n}: byte range {c.start}-{c.end} is empty or negative"
        actual = store.read_range(c.sha256, c.start, c.end)
    except (IntegrityError, InvalidReferenceError) as exc:
        return False, f"citation {c.n}: {exc.message}"
    except (OverflowError, ValueError):  # Python cannot even seek that far
        return False, f"citation {c.n}: byte range {c.start}-{c.end} is beyond any file"
    except OSError as exc:
        return False, f"citation {c.n}: cannot read document {c.sha256[:12]}: {exc.strerror or exc}"
    if actual != c.quote.encode("utf-8"):
        return False, (
            f"citation {c.n}: the quote is not bytes {c.start}-{c.end} of {c.sha256[:12]} "
            f"({c.path})"
        )
    return True, None


def _sentences(store: DocumentStore, hit: Hit) -> list[tuple[int, int, str]]:
    """The chunk's sentences as (start, end, text) with byte offsets into the document."""
    c = hit.chunk
    raw = store.read_range(c.document.cite_sha256, c.start, c.end)
    text = raw.decode("utf-8", "replace")
    out: list[tuple[int, int, str]] = []
    for m in _SENTENCE.finditer(text):
        body = m.group(0).strip()
        if not _content_words(body):
            continue
        a = m.start() + (len(m.group(0)) - len(m.group(0).lstrip()))
        start = c.start + len(text[:a].encode("utf-8"))
        out.append((start, start + len(body.encode("utf-8")), body))
    return out


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}
