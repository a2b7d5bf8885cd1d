"""The ``"dask"`` backend: tasks on a Dask ``distributed`` cluster, through the executor adapter.

It is the adapter around a ``concurrent.futures`` executor that sends each
call as ``client.submit(..., pure=False)`` (``pure=False`` because Dask would
otherwise run identical calls once and share the result). The client is the one given to
``mp.configure(dask_client=...)``, else the current one
(``distributed.get_client()``), looked up at each submission so that a new
client is picked up.

What differs from other executors that run elsewhere:

* A worker that dies mid-task makes Dask run the task again on another worker,
  up to ``distributed.scheduler.allowed-failures`` times (3 by default); then
  Dask raises ``KilledWorker``, which the handle gives as ``WorkerCrashedError``
  with the ``KilledWorker`` chained as its cause.
* Cancelling a handle, or its timeout, cancels the Dask future: a queued task
  never runs; a running one runs on, and its result is released. Dask cancels
  asynchronously: a cancel sent the instant after the submission can reach the
  scheduler before the task does, and a worker freed before the cancel reaches
  it may start the call; either way the handle is cancelled at once and the
  result dropped.
* ``shutdown(cancel_pending=True)`` cancels the tasks no worker has started,
  as the scheduler and the workers tell it then (:meth:`DaskBackend.close`):
  a Dask future's cancel stops a running call's handle too, where a standard
  executor's stops only a call not started. On the client's own event loop
  (a Dask task's callback, a coroutine of an asynchronous client) the question
  and the cancels go to that loop, and come once it runs again.
* A client closed while tasks run fails them with ``ShutdownError``.
* A result that Dask cannot fetch from its worker (one it cannot serialize, a
  lock say) fails the task with ``TaskSerializationError`` naming it (its id
  and function), Dask's error chained.
  So does one whose pickling, or unpickling here, raises a ``BaseException``
  (a ``__reduce__`` that calls ``sys.exit()``): each result travels in a
  :class:`SentResult`, which turns that into an error of the result. A map's
  chunk sends the results it can: only the items whose results cannot be
  sent fail, as ``on_error`` says (:func:`_items_apart`). A worker
  that dies outright as it sends a result (``os._exit()``, a crash in C) is
  not counted against ``allowed-failures``, which counts deaths while a task
  runs: Dask computes the task again without end, and only a timeout ends it.
* A task that waits for tasks of its own secedes from its worker's threads
  (:class:`_SecedingPlace`): with every thread of the cluster so taken, the
  tasks waited for never started.
* Errors raised by the task keep their type, with the worker's traceback.
  Progress, ``check_cancelled`` and the task id do not cross to the workers
  (no-ops there); metadata, callbacks and metrics live in this process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import pickle
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

try:
    import distributed
    from dask.sizeof import sizeof
    from dask.utils import funcname
    from distributed.client import ClosedClientError
    from distributed.protocol import pickle as dask_pickle
    from distributed.protocol.serialize import (
        check_dask_serializable,
        dask_deserialize,
        dask_serialize,
        deserialize,
        serialize,
    )
    from distributed.scheduler import KilledWorker
    from distributed.threadpoolexecutor import thread_state
except ImportError as missing:  # pragma: no cover - the test extras install distributed
    raise ImportError(
        'backend="dask" needs the distributed package: pip install "makeparallel[dask]"'
    ) from missing

from .._coroutines import running_loop
from .._process_chunks import TimedResults
from .._remote_errors import RemoteTraceback, described
from .._states import FAILED
from ..errors import ShutdownError, TaskSerializationError, WorkerCrashedError
from ._adapter import ExecutorBackend
from ._base import _this_thread

if TYPE_CHECKING:
    from .._handle import AsyncHandle

__all__ = [
    "STARTED_QUERY_TIMEOUT",
    "ClientExecutor",
    "DaskBackend",
    "ItemsUnsent",
    "ResultUnfetched",
    "SentResult",
    "TaskFuture",
    "run_on_worker",
]

#: Seconds ``close(cancel_pending=True)`` waits for Dask to say which tasks its workers have started.
STARTED_QUERY_TIMEOUT = 5.0

# The scheduler's states of a task no worker has run to its end (None: the scheduler has yet to
# receive it). "processing" is a task given to a worker, which may run it or hold it in its queue.
_UNFINISHED_STATES = frozenset({None, "released", "waiting", "no-worker", "queued", "processing"})


class DaskBackend(ExecutorBackend):
    """Submits each task to a Dask client as ``client.submit(..., pure=False)``."""

    name = "dask"
    stop_hint = "its Dask future was cancelled (a call already running on a worker runs on)"
    waited_for_on_reader = (
        "runs on a Dask cluster, and this is the event loop thread of its Dask client (a Dask "
        "task's callback runs here)"
    )
    called_on_reader = "in a Dask task's callback, on its client's event loop thread"
    refuses_timed_wait_for_all = False  # documented: a shutdown there asks to cancel once the loop is free

    def __init__(self, client: distributed.Client | None = None) -> None:
        super().__init__(None, in_process=False)
        self._configured = client
        self._client: distributed.Client | None = None
        self._workers = 1

    def use_client(self, client: distributed.Client) -> None:
        """Submit to ``client`` from now on (``configure(dask_client=...)``)."""
        with self._lock:
            self._configured = client
            self._refused = None  # the old client's: health is ready again at once

    def submit(self, handle: AsyncHandle[Any]) -> None:
        self._bind()
        super().submit(handle)

    def hold(self, handle: AsyncHandle[Any]) -> None:
        self._bind()
        super().hold(handle)

    def _send_again(self, handle: AsyncHandle[Any]) -> None:
        try:
            self._bind()  # a client configured, or made current, since the attempt before takes this one
        except Exception as error:  # no client now: the task ends as its last attempt did, with what to do
            handle._give_up_retrying(f"{type(error).__name__}: {error}")
            return
        super()._send_again(handle)

    def reads_results_here(self, handle: AsyncHandle[Any] | None = None) -> bool:
        """Whether this thread runs the event loop of the client that fetches ``handle``'s result (of any task here, without one).

        A result arrives on its client's event loop (:func:`_settle`), whose
        thread runs the task's callbacks: a wait there for a task of that
        client could never end. Clients differ by submission
        (``configure(dask_client=...)``): a task's is the one it was sent to;
        one not sent (held for its slots, waiting to retry) goes to the
        client bound now. Clients of one ``LocalCluster`` share its loop.
        Nothing is looked up on a thread that runs no event loop; without
        ``handle`` (a wait for every task), nothing where no task is
        unfinished here: such a wait ends, on a loop of the program's own too.
        """
        loop = running_loop()
        if loop is None:
            return False
        clients = [self._client_of(handle)] if handle is not None else self._clients_of_unfinished()
        return any(client is not None and _fetches_on(client, loop) for client in clients)

    def _clients_of_unfinished(self) -> list[distributed.Client | None]:
        """The clients that fetch the results of the tasks unfinished here, and the one bound now; none where all ended."""
        with self._lock:
            if not self._active:
                return []
            futures = list(self._futures.values())
        return [self._client, *(future.dask_future.client for future in futures if isinstance(future, TaskFuture))]

    def wait_refused_here(self, handle: AsyncHandle[Any]) -> str:
        """Why a wait for ``handle`` is refused on its client's event loop thread, and what to do instead.

        An asynchronous client's loop is the program's own, where its
        coroutines run: the way to wait there is to await, which the advice
        for a callback (submit the follow-up work and return) did not say.
        """
        # Made with asynchronous=True, as Dask keeps it: its public ``asynchronous`` is true on
        # any client's loop thread, a synchronous client's callbacks included.
        if not getattr(self._client_of(handle), "_asynchronous", False):
            return super().wait_refused_here(handle)
        return (
            "runs on a Dask cluster, and this is the event loop of its asynchronous Dask client "
            "(Client(asynchronous=True)), where your coroutines and the task's callbacks run, and "
            "which reads the result this wait is for: a blocking wait (get(), result(), exception(), "
            "wait(), the blocking mp.gather, mp.wait and mp.as_completed, a map) could never end. "
            "In a coroutine, use `await handle` (or mp.gather_async, `async for` over "
            "mp.as_completed) instead; in a callback, submit the follow-up work and return"
        )

    def wait_for_all_refused_here(self, call: str, done: str, bound: str) -> str:
        """Why ``call``, a wait for every task with no bound, is refused on a client's event loop thread, and what to do instead.

        On an asynchronous client's loop, the program's own, the call comes
        from a coroutine as often as from a callback: it said it was called in
        a Dask task's callback, and to call it from the program's own thread,
        which there is this one.
        """
        loop = running_loop()
        if loop is None or not any(
            client is not None and _fetches_on(client, loop) and getattr(client, "_asynchronous", False)
            for client in self._clients_of_unfinished()
        ):
            return super().wait_for_all_refused_here(call, done, bound)
        return (
            f"{call} called on the event loop of an asynchronous Dask client (Client(asynchronous=True)), "
            "where your coroutines and the Dask tasks' callbacks run, and which reads the results it "
            f"waits for: it would wait for good{done}. In a coroutine, await the tasks first "
            "(`await handle`, mp.gather_async), or run the call on another thread "
            f"(`await asyncio.to_thread(...)`); in a callback, give it {bound}"
        )

    def _client_of(self, handle: AsyncHandle[Any]) -> distributed.Client | None:
        """The client that fetches ``handle``'s result: the one it was sent to, else the one bound now."""
        future = self._futures.get(handle)  # (one lookup, atomic: no lock)
        return future.dask_future.client if isinstance(future, TaskFuture) else self._client

    def reported_worker_count(self) -> int:
        """The cluster's threads as the bound client last heard (1 before a client is found).

        A health check neither looks for a client nor fails without one: it
        raised "found no Dask client" out of ``health()``, and with a client
        current it waited forever for the lock that ``info()`` held.
        """
        return self._threads_now()

    def worker_count(self) -> int:
        if self._client is None:
            self._bind()  # a map sizes its chunks before its first task
        return self._threads_now()

    def _threads_now(self) -> int:
        """The cluster's threads as the bound client last heard from its scheduler (:func:`_threads_heard`), else as counted at the binding.

        Counted at the binding alone, a cluster scaled since (``cluster.scale``,
        ``adapt()``) kept its first size: ``health()`` reported the tasks
        running on the new workers as queued, and a map kept as few chunks in
        flight as the first workers needed.
        """
        client = self._client
        heard = None if client is None else _threads_heard(client)
        return self._workers if heard is None else max(1, heard)

    def _bind(self) -> None:
        """Use the configured client, else the current one; a new client gets a new executor.

        Where none is found, ``health()`` reports every task refused, as for
        a closed client (:meth:`refusing`): with its current client closed (a
        ``with Client(...)`` block left), every task failed "found no Dask
        client" while it said ok.
        """
        try:
            client = self._configured if self._configured is not None else _current_client()
        except RuntimeError as missing:
            self._refused = (str(missing), time.monotonic())
            raise
        if client is self._client:
            return
        executor = ClientExecutor(client)
        workers = _thread_count(client) if client.status == "running" else 1
        with self._lock:
            self._client, self._executor, self._workers = client, executor, max(1, workers)
            self._refused = None  # the old client's

    def close(self, cancel_pending: bool) -> None:
        """Refuse new tasks from now on; with ``cancel_pending``, cancel those no worker has started.

        The adapter cancels every future sent elsewhere, as a standard
        executor's cancel stops only a call not started. A Dask future's
        cancel stops any: ``shutdown(cancel_pending=True)`` ended the running
        tasks' handles cancelled too, their calls running on. So the
        scheduler and the workers are asked first which calls run
        (:func:`_unfinished_keys`), and only the others are cancelled. Dask can
        tell that only as of its answer: a call that a worker starts, or
        ends, as the shutdown asks can be cancelled all the same (its handle
        ends cancelled, the call runs on). Where Dask cannot answer within
        ``STARTED_QUERY_TIMEOUT`` seconds, or the client is closing, none is
        cancelled: the shutdown waits for them as it would without
        ``cancel_pending``.

        On the client's own event loop thread (in a Dask task's callback, in
        a coroutine on the loop of an asynchronous client), which alone
        brings the answer, the question and the cancels are handed to that
        loop (:func:`_cancel_not_started`): they come once the callback
        returns or the coroutine awaits, after the shutdown has returned, so
        its wait does not count them. Asked there, the question held up the
        loop for its whole timeout; not asked, no task was cancelled.
        """
        super().close(cancel_pending=False)
        if not cancel_pending:
            return
        with self._lock:
            futures = [future for future in self._futures.values() if isinstance(future, TaskFuture)]
        loop = running_loop()
        for client, waiting in _pending_by_client(futures).items():
            if loop is not None and _fetches_on(client, loop):
                client.loop.add_callback(_cancel_not_started, client, waiting, self._cancel_unstarted)  # type: ignore[union-attr]
                continue
            unfinished = _ask_unfinished(client, [future.dask_future.key for future in waiting])
            for future in waiting:
                if future.dask_future.key in unfinished:
                    self._cancel_unstarted(future)

    def _carry(self, handle: AsyncHandle[Any], call: tuple[Any, ...]) -> Any:
        # Keyed by the task's name (its function's, or name=): every call travels in call_remotely.
        return self._executor.submit_named(handle.name, *call)

    def is_closed_error(self, error: Exception) -> bool:
        return isinstance(error, ClosedClientError) or super().is_closed_error(error)

    def refusal(self, error: Exception) -> str:
        # The executor is Dask's, made from the client: the client is what the user knows, and replaces.
        if self._configured is not None:  # a new current client is not used instead of it
            advice = "pass a running one with makeparallel.configure(dask_client=client)"
        else:
            advice = "create a new one (it becomes the current one), or pass one with makeparallel.configure(dask_client=client)"
        return f"its Dask client {self._client!r} is closed ({error}); {advice}"

    def cancelled_by_executor(self, handle: AsyncHandle[Any], future: Any) -> tuple[int, BaseException]:
        """A ``ShutdownError`` where the client that ``future`` was sent through was closed; else cancelled.

        That client, not the one configured now: a task sent before
        ``configure(dask_client=...)`` named another ended "cancelled by its
        executor" when its own client was closed, and named the new one's.
        """
        client = future.dask_future.client if isinstance(future, TaskFuture) else self._client
        if client is not None and client.status in ("closing", "closed"):
            return FAILED, ShutdownError(
                f"task {handle._id} ({handle.name}) was still unfinished when its Dask client "
                "was closed"
            )
        return super().cancelled_by_executor(handle, future)

    def translate_error(self, handle: AsyncHandle[Any], error: BaseException) -> BaseException:
        if isinstance(error, ResultUnfetched):
            return _fetch_failure(handle, error.error)
        if isinstance(error, KilledWorker):
            crashed = WorkerCrashedError(
                f"the Dask workers running task {handle._id} ({handle.name}) died, as many "
                "times as the scheduler allows (distributed.scheduler.allowed-failures): "
                f"{error}"
            )
            crashed.__cause__ = error
            crashed._lost_elsewhere = True  # type: ignore[attr-defined]  # for a map (_process_chunks.after_crash)
            return crashed
        return super().translate_error(handle, error)


class ClientExecutor(concurrent.futures.Executor):
    """``client.submit(fn, *args, pure=False)`` as an executor whose futures end however their Dask futures end.

    Dask's own (``client.get_executor()``) left its future pending for good
    where the result, computed, could not be fetched: a result the worker
    could not serialize (a lock) raised as it was fetched, in the coroutine
    that was to end the future. The handle never ended. Here the fetch's
    error ends the future too (:func:`_settle`), and cancelling the future
    cancels the Dask future. The call runs in :func:`run_on_worker`, whose
    result travels in a :class:`SentResult`.
    """

    def __init__(self, client: distributed.Client) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<Dask executor of {self._client!r}>"

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        return self.submit_named(funcname(fn), fn, *args, **kwargs)

    def submit_named(self, name: str, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """:meth:`submit`, keyed on the cluster as Dask keys a call of a function called ``name`` with ``pure=False``.

        Dask's dashboard (task stream, progress bars) and its logs name a
        task by its key's prefix: a task's is its name (``DaskBackend._carry``),
        not that of :func:`call_remotely`, which carries every task's call.
        """
        key = f"{_key_prefix(name)}-{uuid.uuid4()}"
        dask_future = self._client.submit(run_on_worker, _sender(), fn, *args, key=key, pure=False, **kwargs)
        future = TaskFuture(dask_future)
        future.add_done_callback(functools.partial(_cancel_when_cancelled, dask_future))
        loop = self._client.loop  # a client has its loop from its start
        loop.add_callback(_settle, self._client, dask_future, future)  # type: ignore[union-attr]
        return future


def _key_prefix(name: str) -> str:
    """``name`` as a Dask key's prefix: a lone surrogate written as its escape (``\\udcff``).

    Dask sends keys as UTF-8, which has no lone surrogate: a name that held
    one (a path decoded with ``surrogateescape``) failed to encode as the
    client sent the task, which broke the client's connection to its
    scheduler and ended every task of the client in flight cancelled.
    """
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


class TaskFuture(concurrent.futures.Future[Any]):
    """The future :meth:`ClientExecutor.submit` returns: it keeps the Dask future of its call."""

    def __init__(self, dask_future: distributed.Future[Any]) -> None:
        super().__init__()
        self.dask_future = dask_future


def _fetches_on(client: distributed.Client, loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``client`` fetches its results on ``loop``, as Dask's own ``in_async_call`` tells."""
    try:
        io_loop = client.loop
    except RuntimeError:  # its loop never ran, or stopped: it fetches nothing, here or anywhere
        return False
    return getattr(io_loop, "asyncio_loop", None) is loop


def _thread_count(client: distributed.Client) -> int:
    """The threads of ``client``'s workers: asked of the scheduler, or as the client last heard, on its own event loop.

    There (a coroutine on an asynchronous client's loop, a Dask task's
    callback) Dask's blocking calls return their coroutines unrun:
    ``client.nthreads()`` failed the submission with "'coroutine' object has
    no attribute 'values'". The client refreshes what it heard every few
    seconds (``scheduler_info``, without a round trip on that loop).
    """
    loop = running_loop()
    if loop is None or not _fetches_on(client, loop):
        return sum(client.nthreads().values())  # type: ignore[no-untyped-call]
    return _threads_in(client.scheduler_info())


def _threads_heard(client: distributed.Client) -> int | None:
    """The threads of ``client``'s workers as it last heard, without a round trip; None where it heard nothing yet.

    A client asks its scheduler every ``distributed.client.scheduler-info-interval``
    (2 s) and keeps the answer, which its ``scheduler_info()`` gives on its own
    loop; elsewhere that call asks again, a round trip, so the kept answer is read.
    """
    info = getattr(client, "_scheduler_identity", None)
    return _threads_in(info) if info else None


def _threads_in(info: Any) -> int:
    """The threads of the workers in a scheduler's ``identity()``: its total, or the sum of those it lists."""
    total = info.get("total_threads")
    return int(total) if total is not None else sum(worker.get("nthreads", 0) for worker in info.get("workers", {}).values())


def _pending_by_client(futures: list[TaskFuture]) -> dict[distributed.Client, list[TaskFuture]]:
    """The unfinished ``futures`` that Dask may yet start, by the client each was sent through."""
    by_client: dict[distributed.Client, list[TaskFuture]] = {}
    for future in futures:
        if not future.done() and future.dask_future.status in ("pending", "lost"):  # "lost": computed again
            by_client.setdefault(future.dask_future.client, []).append(future)
    return by_client


def _ask_unfinished(client: distributed.Client, keys: list[Any]) -> set[Any]:
    """:func:`_unfinished_keys`, asked from this thread; none where ``client`` cannot answer.

    Not on the client's own event loop thread (``shutdown(cancel_pending=True)``
    in a Dask task's callback): only that loop brings the answer, and the
    question held it up for its whole ``STARTED_QUERY_TIMEOUT``, every result
    of the client with it, to go unanswered all the same.
    """
    if client.status != "running":
        return set()  # closing: its tasks end with ShutdownError (DaskBackend.cancelled_by_executor)
    loop = running_loop()
    if loop is not None and _fetches_on(client, loop):
        return set()
    try:
        unfinished: set[Any] = client.sync(  # type: ignore[no-untyped-call]
            _unfinished_keys, client, keys, asynchronous=False, callback_timeout=STARTED_QUERY_TIMEOUT
        )
    except Exception:  # noqa: BLE001  # no answer in time, or asked on its own loop: Dask cannot tell which run
        return set()
    return unfinished


async def _cancel_not_started(
    client: distributed.Client, futures: list[TaskFuture], cancel: Callable[[TaskFuture], None]
) -> None:
    """On ``client``'s event loop: ``cancel`` those of ``futures`` whose calls no worker has started, as Dask says.

    As :func:`_ask_unfinished` does from another thread, bounded by
    ``STARTED_QUERY_TIMEOUT``; with no answer by then, none is cancelled.
    """
    if client.status != "running":
        return  # closing: its tasks end with ShutdownError (DaskBackend.cancelled_by_executor)
    keys = [future.dask_future.key for future in futures]
    try:
        unfinished = await asyncio.wait_for(_unfinished_keys(client, keys), STARTED_QUERY_TIMEOUT)
    except Exception:  # noqa: BLE001  # no answer in time: Dask cannot tell which run
        return
    for future in futures:
        if future.dask_future.key in unfinished:
            cancel(future)


async def _unfinished_keys(client: distributed.Client, keys: list[Any]) -> set[Any]:
    """Of ``keys``, those whose calls no worker thread runs now and that have not ended, on the client's loop.

    The workers' call stacks say which calls run at this instant (a task
    "processing" on the scheduler may wait in its worker's queue); the
    scheduler's states, asked after them, which ended: a call that ran to its
    end meanwhile is no longer unfinished.
    """
    scheduler: Any = client.scheduler  # a running client's
    # Every worker's: asked for keys, the scheduler looks each up, and fails on one it has yet to receive.
    stacks = await scheduler.call_stack(keys=None)
    states = await scheduler.get_task_status(keys=keys)
    running = {key for per_worker in stacks.values() for key in per_worker}
    return {key for key in keys if key not in running and states.get(key) in _UNFINISHED_STATES}


def _cancel_when_cancelled(dask_future: distributed.Future[Any], future: concurrent.futures.Future[Any]) -> None:
    """Cancel ``dask_future`` once ``future`` is cancelled, from whatever thread cancelled it.

    On its client's event loop thread (a cancel in a Dask task's callback, or
    in a coroutine on the loop of an asynchronous client), Dask's cancel
    returns its coroutine instead of running it: unawaited, the cancel never
    reached the scheduler, and the task ran on. There the coroutine is handed
    to that loop, which runs it as soon as this callback returns; waiting for
    it here would block the very loop that has to run it. Anywhere else the
    cancel is sent before this returns, as Dask's own does.
    """
    if future.cancelled() and dask_future.status != "cancelled":
        client = dask_future.client
        loop = running_loop()
        if loop is not None and _fetches_on(client, loop):
            client.loop.add_callback(functools.partial(client.cancel, [dask_future], asynchronous=True))
        else:
            dask_future.cancel()  # type: ignore[no-untyped-call]


async def _settle(
    client: distributed.Client, dask_future: distributed.Future[Any], future: concurrent.futures.Future[Any]
) -> None:
    """On the client's event loop: wait for ``dask_future``, fetch its result, and end ``future`` the same way.

    A future cancelled, or left unfinished by a client closing, is cancelled
    (``DaskBackend.cancelled_by_executor`` tells which); a task's error is the
    future's; a result computed but not fetched fails it with
    ``TaskSerializationError``.
    """
    try:
        [value] = await client.gather([dask_future], asynchronous=True)  # type: ignore[no-untyped-call]
    except BaseException as error:  # asyncio.CancelledError too: a cancelled Dask future, or the loop's end
        if dask_future.status == "cancelled" or client.status in ("closing", "closed"):
            future.cancel()
        elif dask_future.status == "finished":
            _end(future, ResultUnfetched(error))
        else:
            _end(future, error)
        # The client keeps the error the Dask future failed with, and the fetch left this frame in
        # its traceback, locals and all: the task's future holds the handle (its done-callback),
        # which lived on as long as the client did, and a failure dropped unread was never logged.
        del future
        if isinstance(error, asyncio.CancelledError) and dask_future.status != "cancelled":
            raise  # the loop's own cancellation of this coroutine, not the task's
    else:  # a SentResult: its result, or why it could not travel (this task's alone)
        if value.failure is None:
            _end(future, None, value.value)
        else:
            _end(future, ResultUnfetched(value.failure))


class ResultUnfetched(Exception):
    """What ends a task's future where its result, computed, could not come here; ``error`` says why.

    The future knows no task: :meth:`DaskBackend.translate_error`, which has
    the handle, makes it the task's ``TaskSerializationError`` (:func:`_fetch_failure`).
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _fetch_failure(handle: AsyncHandle[Any], error: BaseException) -> TaskSerializationError:
    """The ``TaskSerializationError`` of task ``handle``, whose result could not come here, ``error`` saying why."""
    # ItemsUnsent is a PicklingError: named so, as a list that fails whole always was
    # (a task's own list; a map's chunk reads it in after_unreadable, never this message).
    kind = "PicklingError" if isinstance(error, ItemsUnsent) else type(error).__name__
    failure = TaskSerializationError(
        f"the result of task {handle._id} ({handle.name}) could not be fetched from its Dask worker: {kind}: "
        f"{error}. Return data Dask can serialize (picklable), or use backend='thread'"
    )
    failure.__cause__ = error
    if isinstance(error, ItemsUnsent):  # a map's chunk goes on without them (after_unreadable)
        failure._unsent = (error.results, error.unsent, "its Dask worker")  # type: ignore[attr-defined]
    return failure


def run_on_worker(sender: str, fn: Any, /, *args: Any, **kwargs: Any) -> SentResult:
    """On a Dask worker: ``fn(*args, **kwargs)``, its result held for sending in a :class:`SentResult`.

    Meanwhile the worker's thread is a :class:`_SecedingPlace` (``pool_of_this_thread``):
    a wait of the task for tasks of its own secedes from the worker's threads.
    ``sender`` is the :func:`_sender` of the process that sent the task: a
    worker of an in-process cluster runs it in that very process.
    """
    previous = getattr(_this_thread, "pool", None)
    _this_thread.pool = _SECEDES_HERE if sender == _sender() else _SECEDES
    try:
        return SentResult(fn(*args, **kwargs))
    finally:
        _this_thread.pool = previous


_process_id: tuple[int, str] | None = None


def _sender() -> str:
    """This process, as :func:`run_on_worker` tells it from another: unique across machines, and after a fork."""
    global _process_id
    pid = os.getpid()
    if _process_id is None or _process_id[0] != pid:
        _process_id = (pid, f"{pid}-{uuid.uuid4()}")
    return _process_id[1]


class _SecedingPlace:
    """A Dask worker's thread while it runs a task: a wait there for other tasks secedes from the worker's threads.

    A task that waits for tasks it submitted (a handle's ``get()``, ``gather``,
    a map) held its thread, and with every thread of the cluster so taken, the
    tasks waited for never started: the waits lasted their whole timeout, or
    for good. As Dask's ``client.gather`` in a task wants, the first wait calls
    ``distributed.secede()``: the worker runs one more thread meanwhile, and the
    task runs on outside its threads until it ends (a thread that seceded
    leaves the pool once its task ends; rejoining would block the wait's end,
    which may be a callback on an event loop, until another task ends). Its
    methods are those the waits call on the library's own thread pool
    (``ThreadBackend.worker_blocks``).
    """

    __slots__ = ("sent_from_here",)

    def __init__(self, sent_from_here: bool) -> None:
        #: Whether this process sent the task (its worker is one of an in-process cluster): a wait
        #: for every task of this process (``shutdown()``) would wait for this one's end too.
        self.sent_from_here = sent_from_here

    def worker_blocks(self) -> None:
        if getattr(thread_state, "proceed", False):  # still one of the worker's threads: not seceded yet
            distributed.secede()  # type: ignore[no-untyped-call]

    def worker_unblocks(self) -> None:
        """Nothing: the task stays seceded until it ends."""

    def places_all_lent(self) -> bool:
        """Never: every wait can secede, or has."""
        return False


_SECEDES = _SecedingPlace(sent_from_here=False)
_SECEDES_HERE = _SecedingPlace(sent_from_here=True)


class SentResult:
    """A task's result on its Dask worker, serialized so that its serializing and deserializing raise no ``BaseException``.

    Dask pickles a result only as it sends it, in a coroutine of the worker's
    event loop, and catches what ``Exception`` pickling raises there. A
    ``SystemExit`` or ``KeyboardInterrupt`` (a ``__reduce__`` that calls
    ``sys.exit()``) stopped that loop, and the worker with it: the scheduler
    took the result for lost with its worker and ran the task again, on
    another worker, without end (``allowed-failures`` counts only deaths while
    a task runs, not while its result waits to be fetched). Any other
    ``BaseException`` ended the worker's reply, and the fetch waited for good.
    Unpickled here, on the client's event loop, a ``SystemExit`` stopped that
    loop, and the scheduler of a ``LocalCluster`` in this process.

    So Dask's serializer of a ``SentResult`` (:func:`_serialize_sent`)
    serializes the result as Dask would, with its own serializers (an array's
    data, bytes, a memoryview sent as they are, without a copy; pickle,
    cloudpickle where that fails, for the rest). What that raises travels
    instead as the error of the result, which deserializing puts in its
    ``failure`` (it never raises: :func:`_deserialize_sent`), and the task
    fails with ``TaskSerializationError``. Deserializing puts what the
    result's own raises there as an ``UnpicklingError`` likewise, and gives
    back a ``SentResult`` again, so a result spilled to disk on its worker
    and read back stays guarded. A list of plain values (a map's chunk
    of results) travels as one pickle, where a result sent as a message's
    data had each item sent with a header of its own: a map of 200,000 items
    in four chunks took 4 s on two local workers, 0.04 s now; one that holds
    arrays or memoryviews has its items sent one by one, those without a copy.
    A list that cannot be serialized whole (a map's chunk with a lock among
    its results) is sent without the items that cannot be pickled alone, and
    deserializes with the failure :class:`ItemsUnsent` (:func:`_items_apart`).

    Where no Dask serializer is used (``pickle`` alone among the
    serializers), ``__reduce_ex__`` guards the pickling the same way: the
    result pickled once, with Dask's pickler, its buffers out of band where
    the protocol allows. The client fetches through the scheduler at protocol
    4, which allows none: pickled so, an array's data is copied into the
    pickle and out of it again (a 400 MB array took 2 s, not 0.4 s), and a
    memoryview arrives as bytes.
    """

    __slots__ = ("failure", "value")

    def __init__(self, value: Any, failure: BaseException | None = None) -> None:
        self.value = value
        self.failure = failure  # why the result could not come (deserialized so): this task's error alone

    def __repr__(self) -> str:
        return f"<SentResult of type {type(self.value).__qualname__}>"

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        if self.failure is not None:  # (one read back from a worker's disk that could not be: it says why)
            return _unsendable, (str(self.failure), "")
        out_of_band = isinstance(protocol, int) and protocol >= 5
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = dask_pickle.dumps(  # type: ignore[no-untyped-call]
                self.value, protocol=protocol, buffer_callback=buffers.append if out_of_band else None
            )
        except BaseException as error:  # noqa: BLE001  # SystemExit too: it stopped the worker's event loop
            apart = _pickled_apart(self.value, protocol)
            if apart is not None:
                return _received_apart, apart
            what = f"the task's result, a {type(self.value).__qualname__}, could not be pickled on its Dask worker"
            return _unsendable, (f"{what}: {described(error)}", "".join(traceback.format_exception(error)))
        return _received, (pickle.PickleBuffer(data) if out_of_band else data, buffers)


def _serialize_sent(result: SentResult, context: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """Dask's serializer of a :class:`SentResult`: its result as Dask serializes it, or why it cannot be.

    ``context`` is the connection's (its pickle protocol); the header nests
    the result's own, as Dask's headers of a list's items do. A list, tuple or
    set (a map's chunk) holding an item of a type Dask serializes itself (an
    array, a memoryview) has its items serialized one by one, those without
    a copy; others are pickled whole. Dask's own guess looks at the first
    item alone: a chunk that began with ``None`` had its arrays copied into
    the pickle, and its memoryviews arrive as bytes.
    """
    value = result.value
    if result.failure is not None:  # (as in __reduce_ex__)
        return {"unsendable": [str(result.failure), ""]}, []
    if type(value) is TimedResults:  # a map's chunk: its items go as a list's, its time beside them
        header, frames = _serialize_sent(SentResult(list(value)), context)
        if "result" in header and "unsent" not in header:
            header["seconds"] = value.seconds
        return header, frames
    try:
        header, frames = _serialized(value, context)
    except BaseException as error:  # noqa: BLE001  # SystemExit too: it stopped the worker's event loop
        apart = _serialized_apart(value, context)
        if apart is not None:
            return apart
        # Dask raises "Could not serialize object of type X" from the serializer's own error, which says why.
        why = error.__cause__ if isinstance(error, TypeError) and error.__cause__ is not None else error
        what = f"the task's result, a {type(value).__qualname__}, could not be pickled on its Dask worker"
        return {"unsendable": [f"{what}: {described(why)}", "".join(traceback.format_exception(error))]}, []
    return {"result": header}, frames


def _serialized(value: Any, context: dict[str, Any] | None) -> tuple[dict[str, Any], list[Any]]:
    """``value`` as Dask serializes it, a collection holding an item Dask serializes itself item by item."""
    iterate: bool | None = None  # Dask's guess
    if type(value) in (list, tuple, set):
        examples = {type(item): item for item in value}.values()  # one item of each type
        iterate = any(check_dask_serializable(item) for item in examples) or None  # type: ignore[no-untyped-call]
    header, frames = serialize(value, on_error="raise", context=context, iterate_collection=iterate)
    return header, frames


def _serialized_apart(value: Any, context: dict[str, Any] | None) -> tuple[dict[str, Any], list[Any]] | None:
    """:func:`_serialize_sent` of a list that could not be serialized whole: without its items that cannot be (:func:`_items_apart`)."""
    apart = _items_apart(value)
    if apart is None:
        return None
    kept, unsent = apart
    try:
        header, frames = _serialized(kept, context)
    except BaseException:  # noqa: BLE001  # the items that pickle alone do not together: the list fails whole
        return None
    return {"result": header, "unsent": unsent}, frames


def _pickled_apart(value: Any, protocol: Any) -> tuple[bytes, list[tuple[int, str, str]]] | None:
    """:meth:`SentResult.__reduce_ex__` of a list that could not be pickled whole: without its items that cannot be."""
    apart = _items_apart(value)
    if apart is None:
        return None
    kept, unsent = apart
    try:
        data: bytes = dask_pickle.dumps(kept, protocol=protocol)  # type: ignore[no-untyped-call]
    except BaseException:  # noqa: BLE001  # the items that pickle alone do not together: the list fails whole
        return None
    return data, unsent


class _QuietProbes(logging.Filter):
    """Drops the records of Dask's pickling logger in a thread while it probes items (:func:`_items_apart`).

    ``distributed.protocol.pickle.dumps`` logs each object it cannot pickle at
    ERROR, with its traceback and repr: probing a map's chunk of 2,000 locks
    logged 2,000 of them on the worker (146,000 lines, most of its 1.4 s). The
    error sent back says why, with the first one's traceback; Dask's own record
    of the list as a whole stays. Per thread: another task's failure on the
    same worker is logged as ever.
    """

    def __init__(self) -> None:
        super().__init__()
        self._probing = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self._probing, "on", False)

    @contextlib.contextmanager
    def probing(self) -> Iterator[None]:
        """Quiet Dask's pickling logger in this thread for the block."""
        self._probing.on = True
        try:
            yield
        finally:
            self._probing.on = False


_quiet_probes = _QuietProbes()
dask_pickle.logger.addFilter(_quiet_probes)


def _items_apart(value: Any) -> tuple[list[Any], list[tuple[int, str, str]]] | None:
    """A list that could not be serialized whole: with ``None`` in place of each item that cannot be pickled, and why each cannot.

    A map's chunk of results is such a list: its items that can be sent go
    back, and only those that cannot fail (``_process_chunks.after_unreadable``),
    as the process backend fails only the item whose result cannot be pickled.
    Each item is pickled alone, once the list as a whole failed: a result
    that serializes pays nothing. None where ``value`` is no list, or each of
    its items pickles alone (the list fails whole, as it did).

    Returns:
        The list of the others, and ``(index, "Type: message", traceback)``
        for each item that cannot be pickled (the traceback of the first
        only, ``""`` for the others: a chunk of 10,000 locks formatted each).
    """
    if type(value) is not list and type(value) is not TimedResults:  # (a map's chunk pickled alone: no Dask serializer)
        return None
    unsent: list[tuple[int, str, str]] = []
    with _quiet_probes.probing():  # each item that fails is logged at ERROR by Dask otherwise
        for index, item in enumerate(value):
            try:
                dask_pickle.dumps(item)  # type: ignore[no-untyped-call]
            except BaseException as error:  # noqa: BLE001  # SystemExit too: a __reduce__ that calls sys.exit()
                # The first's traceback alone: a map raises that one, and skips the others or gives None.
                text = "" if unsent else "".join(traceback.format_exception(error))
                unsent.append((index, described(error), text))
    if not unsent:
        return None
    kept = list(value)
    for index, _, _ in unsent:
        kept[index] = None
    return kept, unsent


def _deserialize_sent(header: dict[str, Any], frames: list[Any]) -> SentResult:
    """Undo :func:`_serialize_sent`: the result, or in its ``failure`` why it could not come. Never raises.

    Dask fetches the results of tasks that end together in one message, and
    an error raised as one of them was deserialized failed them all: a map's
    chunk whose result held a lock failed its sibling chunk too, which then
    handed out the first one's results, twice. So the ``failure`` is a
    ``PicklingError`` (the result could not be serialized on its worker, the
    worker's traceback chained), an :class:`ItemsUnsent` (some items of a
    list could not be), or an ``UnpicklingError`` (its deserializing here
    raised, that error chained), and :func:`_settle` fails this task alone.
    """
    if "unsendable" in header:
        message, worker_traceback = header["unsendable"]
        return _unsendable(message, worker_traceback)
    try:
        value = deserialize(header["result"], frames)  # type: ignore[no-untyped-call]
    except BaseException as error:  # noqa: BLE001  # SystemExit too: it stopped the client's event loop
        return SentResult(None, _unpickling_failure(error))
    if "unsent" in header:
        return SentResult(None, ItemsUnsent(value, [(index, problem, text) for index, problem, text in header["unsent"]]))
    if "seconds" in header:
        return SentResult(TimedResults(value, header["seconds"]))
    return SentResult(value)


def _unpickling_failure(error: BaseException) -> pickle.UnpicklingError:
    failure = pickle.UnpicklingError(f"the task's result could not be unpickled here: {described(error)}")
    failure.__cause__ = error
    return failure


dask_serialize.register(SentResult)(_serialize_sent)  # type: ignore[no-untyped-call]
dask_deserialize.register(SentResult)(_deserialize_sent)  # type: ignore[no-untyped-call]


def _received(data: Any, buffers: list[Any]) -> SentResult:
    """Unpickle a result pickled by :meth:`SentResult.__reduce_ex__`; never raises (see :func:`_deserialize_sent`)."""
    try:
        return SentResult(pickle.loads(data, buffers=buffers))
    except BaseException as error:  # noqa: BLE001  # SystemExit too: it stopped the client's event loop
        return SentResult(None, _unpickling_failure(error))


def _received_apart(data: bytes, unsent: list[tuple[int, str, str]]) -> SentResult:
    """Unpickle the items of a list pickled without those that cannot be (:func:`_items_apart`): an :class:`ItemsUnsent` failure."""
    try:
        kept = pickle.loads(data)
    except BaseException as error:  # noqa: BLE001  # SystemExit too: it stopped the client's event loop
        return SentResult(None, _unpickling_failure(error))
    return SentResult(None, ItemsUnsent(kept, unsent))


class ItemsUnsent(pickle.PicklingError):
    """A task's result, a list, some of whose items could not be pickled on its Dask worker: the others came.

    ``results`` is the list with ``None`` in place of each of those, and
    ``unsent`` has ``(index, "Type: message", the worker's traceback)`` for
    each of them (the traceback of the first only).
    """

    def __init__(self, results: list[Any], unsent: list[tuple[int, str, str]]) -> None:
        index, problem, worker_traceback = unsent[0]
        which = f"item {index} of it cannot be" if len(unsent) == 1 else f"{len(unsent)} of its items cannot be, item {index} the first"
        super().__init__(f"the task's result, a list, could not be pickled on its Dask worker: {which}: {problem}")
        self.results = results
        self.unsent = unsent
        self.__cause__ = RemoteTraceback(worker_traceback)


def _unsendable(message: str, worker_traceback: str) -> SentResult:
    """Unpickled in place of a result that could not be pickled: why, the worker's traceback chained."""
    error = pickle.PicklingError(message)
    if worker_traceback:
        error.__cause__ = RemoteTraceback(worker_traceback)
    return SentResult(None, error)


def _sizeof_sent(result: SentResult) -> int:
    # The worker's memory accounting (spilling, the scheduler's nbytes) counts the result, not its holder.
    return int(sizeof(result.value))


sizeof.register(SentResult, _sizeof_sent)  # type: ignore[no-untyped-call]


def _end(future: concurrent.futures.Future[Any], error: BaseException | None, value: Any = None) -> None:
    """Set ``future``'s outcome, unless a cancel ended it first."""
    try:
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled meanwhile: the cancel is its end


def _current_client() -> distributed.Client:
    """The client of ``distributed.get_client()``, or an error that says what to do."""
    try:
        return distributed.get_client()
    except ValueError as error:
        raise RuntimeError(
            "backend='dask' found no Dask client: create one first "
            "(distributed.Client(...)) or pass it with "
            "makeparallel.configure(dask_client=client)"
        ) from error
