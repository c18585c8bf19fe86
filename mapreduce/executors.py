"""Executors: where tasks run. One small interface, three implementations.

`submit(fn, task)` queues `fn(task)`; `next_completed()` blocks until some submitted task has
finished and returns `(task, ok, result_or_exception)`. Retries are the engine's business: an
executor only reports what happened, including a worker that died (`WorkerDied`).

- `SequentialExecutor`: runs each task in the calling process when asked for the next result.
- `ProcessExecutor`: a pool of N worker processes, one task each at a time, fed over pipes;
  a worker that dies (e.g. SIGKILL) is noticed through its process sentinel, reported as
  `WorkerDied` for the task it was running, and replaced by a fresh process.
- `DaskExecutor`: `dask.distributed`; a `LocalCluster` of N single-threaded worker processes, or
  an existing scheduler (`tcp://host:8786`). Dask re-runs tasks of workers that die on its own;
  a task that still fails comes back as an exception like anywhere else.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import traceback
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

ENGINES = ("sequential", "processes", "dask")
Outcome = tuple[Any, bool, Any]


class WorkerDied(RuntimeError):
    """The worker process running a task exited before returning a result."""


class RemoteError(RuntimeError):
    """A task raised in a worker and its exception could not be sent back as is."""


class Executor(ABC):
    """Runs submitted tasks; see the module docstring for the contract."""

    name: str
    workers: int

    @abstractmethod
    def submit(self, fn: Callable[[Any], Any], task: Any) -> None: ...

    @abstractmethod
    def next_completed(self) -> Outcome: ...

    @abstractmethod
    def cancel_all(self) -> None:
        """Forget every submitted task that has not been collected (running ones are stopped), so
        a failed job leaves nothing behind for the next job on this executor."""

    @abstractmethod
    def close(self) -> None:
        """Release workers; tasks still running are abandoned."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SequentialExecutor(Executor):
    """Everything in the calling process, one task at a time (the reference and the debugger's friend)."""

    name = "sequential"
    workers = 1

    def __init__(self) -> None:
        self._queue: deque[tuple[Callable[[Any], Any], Any]] = deque()

    def submit(self, fn: Callable[[Any], Any], task: Any) -> None:
        self._queue.append((fn, task))

    def cancel_all(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        self.cancel_all()

    def next_completed(self) -> Outcome:
        fn, task = self._queue.popleft()
        try:
            return task, True, fn(task)
        except Exception as exc:
            return task, False, exc


def _worker_loop(conn: multiprocessing.connection.Connection) -> None:
    """Body of a pool worker: run `(fn, task)` messages until told to stop (None) or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        fn, task = message
        try:
            reply: tuple[bool, Any] = (True, fn(task))
        except Exception as exc:
            reply = (False, exc)
        try:
            conn.send(reply)
        except Exception:  # the exception (or result) did not pickle: send its text instead
            error = reply[1] if not reply[0] else None
            text = "".join(traceback.format_exception(error)) if error else "unpicklable result"
            conn.send((False, RemoteError(text)))


class _PoolWorker:
    def __init__(self, ctx: Any):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.task: Any = None


def _default_context() -> Any:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["mapreduce.tasks"])
        return ctx
    return mp.get_context("spawn")


class ProcessExecutor(Executor):
    """A local pool of `workers` processes (forkserver where available, else spawn)."""

    name = "processes"

    def __init__(self, workers: int, start_method: str | None = None):
        if workers < 1:
            raise ValueError(f"ProcessExecutor workers={workers} must be >= 1")
        self.workers = workers
        self._ctx = mp.get_context(start_method) if start_method else _default_context()
        self._pool: list[_PoolWorker] = []
        self._pending: deque[tuple[Callable[[Any], Any], Any]] = deque()
        self._done: deque[Outcome] = deque()
        self.replaced = 0

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (empty before the first submit)."""
        return [w.process.pid for w in self._pool if w.process.pid is not None]

    def submit(self, fn: Callable[[Any], Any], task: Any) -> None:
        if not self._pool:
            self._pool = [_PoolWorker(self._ctx) for _ in range(self.workers)]
        self._pending.append((fn, task))

    def _dispatch(self) -> None:
        for worker in self._pool:
            if not self._pending:
                return
            if worker.task is None:
                if not worker.process.is_alive():
                    self._replace(worker)
                    return self._dispatch()
                fn, task = self._pending.popleft()
                worker.task = task
                worker.conn.send((fn, task))

    def _replace(self, worker: _PoolWorker) -> None:
        worker.process.join()
        worker.conn.close()
        self._pool[self._pool.index(worker)] = _PoolWorker(self._ctx)
        self.replaced += 1

    def _collect(self, worker: _PoolWorker) -> None:
        task, worker.task = worker.task, None
        try:
            ok, value = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(5)
            code = worker.process.exitcode
            cause = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self._replace(worker)
            self._done.append(
                (task, False, WorkerDied(f"worker pid {worker.process.pid} died ({cause})"))
            )
        else:
            self._done.append((task, ok, value))

    def next_completed(self) -> Outcome:
        while not self._done:
            self._dispatch()
            busy = [w for w in self._pool if w.task is not None]
            if not busy:
                raise RuntimeError("next_completed() called with no task submitted")
            waitables: list[Any] = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            ready = multiprocessing.connection.wait(waitables)
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    self._collect(worker)
        return self._done.popleft()

    def cancel_all(self) -> None:
        self._pending.clear()
        self._done.clear()
        for worker in list(self._pool):
            if worker.task is not None:
                worker.process.kill()
                worker.task = None
                self._replace(worker)

    def close(self) -> None:
        for worker in self._pool:
            if worker.task is not None:
                worker.process.kill()
            else:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        for worker in self._pool:
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._pool = []


class DaskExecutor(Executor):
    """Tasks as `dask.distributed` futures.

    With `client` given it is used and left open; with `scheduler` ("tcp://host:8786") a client
    connects to that cluster; otherwise a `LocalCluster` of `workers` single-threaded processes is
    started (and stopped by `close`).
    """

    name = "dask"

    def __init__(self, workers: int = 2, scheduler: str | None = None, client: Any = None):
        import logging

        from distributed import Client, LocalCluster, as_completed

        self._cluster = None
        self._own_client = client is None
        if client is None and scheduler is None:
            self._cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            client = Client(self._cluster)
        elif client is None:
            client = Client(scheduler)
        self.client = client
        self.workers = len(client.scheduler_info()["workers"]) or workers
        self._completed = as_completed()
        self._running: dict[str, tuple[Any, Any]] = {}

    def submit(self, fn: Callable[[Any], Any], task: Any) -> None:
        future = self.client.submit(fn, task, pure=False, key=f"mapreduce-{uuid.uuid4().hex}")
        self._running[future.key] = (future, task)
        self._completed.add(future)

    def next_completed(self) -> Outcome:
        future = next(self._completed)
        _, task = self._running.pop(future.key)
        if future.status == "finished":
            outcome: Outcome = (task, True, future.result())
        elif future.status == "error":
            outcome = (task, False, future.exception())
        else:
            outcome = (
                task,
                False,
                RuntimeError(f"dask future {future.key} ended as {future.status}"),
            )
        future.release()
        return outcome

    def cancel_all(self) -> None:
        if self._running:
            self.client.cancel([future for future, _ in self._running.values()])
            self._running.clear()
        self._completed.clear()

    def close(self) -> None:
        self.cancel_all()
        if self._own_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_executor(
    engine: str, workers: int | None = None, scheduler: str | None = None
) -> Executor:
    """Executor by name: "sequential", "processes" (`workers`, default all CPUs) or "dask"
    (`workers` for a LocalCluster, default 2, or `scheduler` for an existing cluster)."""
    if engine == "sequential":
        return SequentialExecutor()
    if engine == "processes":
        return ProcessExecutor(workers or os.cpu_count() or 1)
    if engine == "dask":
        return DaskExecutor(workers or 2, scheduler=scheduler)
    raise ValueError(f"engine={engine!r} is not allowed; use one of {ENGINES}")
