"""The callback's worker: runs each epoch's analysis off the training thread and hands the results back in order."""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Worker"]

T = TypeVar("T")


class Worker(Generic[T]):
    """One worker thread (or none), and the jobs submitted to it, oldest first.

    With ``asynchronous=False`` a job runs at once on the calling thread; its result (or error) waits in the queue
    like a worker's.
    """

    def __init__(self, asynchronous: bool, name: str = "classim") -> None:
        self.asynchronous = asynchronous
        self.name = name
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: collections.deque[concurrent.futures.Future[T]] = collections.deque()

    def submit(self, fn: Callable[..., T], *args: Any) -> None:
        """Run ``fn(*args)`` on the worker thread (or now, when not asynchronous)."""
        if not self.asynchronous:
            future: concurrent.futures.Future[T] = concurrent.futures.Future()
            try:
                future.set_result(fn(*args))
            except Exception as err:  # handed over like a worker's error
                future.set_exception(err)
            self._pending.append(future)
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name)
        self._pending.append(self._executor.submit(fn, *args))

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet handed back."""
        return len(self._pending)

    def first_done(self) -> bool:
        """Whether the oldest job has finished."""
        return bool(self._pending) and self._pending[0].done()

    def finished(self, wait: bool = False) -> Iterator[concurrent.futures.Future[T]]:
        """The finished jobs, oldest first, each handed back once (with ``wait``, all of them, waiting)."""
        while self._pending and (wait or self._pending[0].done()):
            future = self._pending.popleft()
            if wait:
                concurrent.futures.wait([future])
            yield future

    def oldest(self) -> concurrent.futures.Future[T] | None:
        """The oldest job, waited for and handed back (``None`` when there is none)."""
        if not self._pending:
            return None
        future = self._pending.popleft()
        concurrent.futures.wait([future])
        return future

    def wait_all(self) -> None:
        """Wait until every submitted job has finished (they stay to be handed back)."""
        concurrent.futures.wait(list(self._pending))

    def shutdown(self) -> None:
        """Stop the worker thread after its jobs."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
