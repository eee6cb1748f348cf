"""Run a blocking generation in its own thread and read it from asyncio, cancellably.

Backends decode in C with the GIL released, so each running request gets a thread
of its own (not a small shared executor: a request waiting for a busy model must not
hold up a request to another one). The thread checks a cancel flag after every
chunk; when it is set (the client went away) the thread closes the backend's
iterator, which stops decoding before the next token and releases the model.

Items are handed over in small batches: one at once, then at most every ``FLUSH_S``.
On a machine whose cores all decode, every wake-up of the event loop and every socket
write takes a core from llama.cpp's threads mid-step; coalescing tokens that arrive
faster than ~50 per second keeps that cost down while a human sees no delay.
``on_done`` runs in the thread after the backend has let go of the model, so a
lease released there is never released while the model is still decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Outcome = Literal["ok", "error", "cancelled"]


@dataclass
class RunResult(Generic[T]):
    """How a run ended: the last item seen, the error if any."""

    outcome: Outcome = "ok"
    last: T | None = None
    error: BaseException | None = None
    items: int = 0


_DONE = object()
FLUSH_S = 0.02


class ThreadedRun(Generic[T]):
    """An async iterator over ``make_iter()``'s items, produced in a dedicated thread."""

    def __init__(
        self,
        make_iter: Callable[[], Iterator[T]],
        on_done: Callable[[RunResult[T]], None] | None = None,
        name: str = "locara-run",
        is_last: Callable[[T], bool] | None = None,
    ) -> None:
        self._make_iter = make_iter
        self._is_last = is_last
        self._on_done = on_done
        self._name = name
        self._cancel = threading.Event()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._buffer: deque[T] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.result: RunResult[T] = RunResult()

    def start(self) -> ThreadedRun[T]:
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._work, name=self._name, daemon=True).start()
        return self

    def cancel(self) -> None:
        """Ask the thread to stop before its next item."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _put(self, item: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self._cancel.set()

    def _work(self) -> None:
        result = self.result
        it: Iterator[T] | None = None
        pending: list[T] = []
        last_flush = 0.0
        try:
            if self._cancel.is_set():
                result.outcome = "cancelled"
                return
            it = self._make_iter()
            for item in it:
                result.last = item
                result.items += 1
                pending.append(item)
                last = self._is_last is not None and self._is_last(item)
                now = time.monotonic()
                if last or now - last_flush >= FLUSH_S or self._cancel.is_set():
                    self._put(pending)
                    pending, last_flush = [], now
                if last:
                    break  # complete: a cancel from now on is a client closing a finished stream
                if self._cancel.is_set():
                    result.outcome = "cancelled"
                    break
            else:
                if self._cancel.is_set():  # the backend saw the cancel and stopped early
                    result.outcome = "cancelled"
        except BaseException as exc:  # handed to the reader, which re-raises it
            result.outcome = "cancelled" if self._cancel.is_set() else "error"
            result.error = exc
            if pending:
                self._put(pending)
                pending = []
            self._put(exc)
        finally:
            if pending:
                self._put(pending)
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()  # stops the backend's loop and releases its model lock
                except Exception as exc:
                    result.error = result.error or exc
            try:
                if self._on_done is not None:
                    self._on_done(result)
            finally:
                self._put(_DONE)

    def __aiter__(self) -> ThreadedRun[T]:
        return self

    async def __anext__(self) -> T:
        if not self._buffer:
            batch = await self._queue.get()
            if batch is _DONE:
                raise StopAsyncIteration
            if isinstance(batch, BaseException):
                raise batch
            self._buffer.extend(batch)  # type: ignore[arg-type]
        return self._buffer.popleft()

    def ready(self) -> list[T]:
        """Items already handed over, taken without waiting (the rest of the current batch)."""
        out = list(self._buffer)
        self._buffer.clear()
        return out


async def batches(
    run: ThreadedRun[T], first: T, is_last: Callable[[T], bool]
) -> AsyncIterator[list[T]]:
    """The run's items from ``first`` on, grouped as they arrived, up to the last one."""
    item: T | None = first
    while item is not None:
        group = [item, *run.ready()]
        for i, x in enumerate(group):
            if is_last(x):
                yield group[: i + 1]
                return
        yield group
        item = await anext(run, None)


async def in_thread(fn: Callable[..., R], *args: Any, name: str = "locara-call") -> R:
    """``fn(*args)`` in a thread of its own, awaited without blocking the event loop.

    Not ``asyncio.to_thread``: its executor has a handful of threads (cores + 4), and a
    call that waits (for a model lock, for a load) would hold one; a few such waiting
    requests would stall every other route that needs the executor.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        ok = False
        value: Any = None
        try:
            value, ok = fn(*args), True
        except BaseException as exc:
            value = exc
        with contextlib.suppress(RuntimeError):  # the event loop is gone (shutting down)
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future
