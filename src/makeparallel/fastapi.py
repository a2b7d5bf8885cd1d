"""FastAPI (and any ASGI app): pools that start and stop with the server, health and metrics routes.

    import makeparallel as mp
    from fastapi import FastAPI
    from makeparallel.fastapi import lifespan, router

    app = FastAPI(lifespan=lifespan(backend="process", prestart=True, shutdown_timeout=30))
    app.include_router(router())            # /health/live, /health/ready, /metrics

    @mp.parallel
    def render(n: int) -> bytes: ...

    @app.get("/render/{n}")
    async def render_route(n: int) -> bytes:
        return await render(n)              # the loop is never blocked

:func:`lifespan` configures the pools at start-up (and, with ``prestart``, starts
the process workers and waits until they are ready, before the first request) and at shutdown calls
``mp.shutdown(timeout_secs=shutdown_timeout, cancel_pending=...)``, off the event
loop, so that no worker process outlives the server (with several servers or apps in
one process, the last to stop shuts down; a Ctrl-C meanwhile, such as
uvicorn's second one, or a cancel of the lifespan stops the waiting: exit then
abandons what is left). It is a plain lifespan
function: to keep your own, pass it as ``app_lifespan=`` (it runs inside, with the
pools up), or enter ours in yours (``async with mp_lifespan(app): ...``).

ASGI servers (uvicorn, hypercorn) do not cancel a request whose client went
away: they only answer ``http.disconnect`` to the app's next ``receive()``,
which a route that awaits a handle never calls, so the task would run to its
end for nobody. :class:`CancelOnDisconnect` (``app.add_middleware(CancelOnDisconnect)``)
cancels such a request, and with it the tasks it awaits.

Awaiting handles never takes a token of Starlette's thread limiter (the one
that runs plain ``def`` endpoints): the library's pools are threads and
processes of their own, and the routes here are ``async def``.

Needs the optional extra: ``pip install "makeparallel[fastapi]"`` (FastAPI and
prometheus-client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import makeparallel as mp

from ._interruptible import SLICE
from . import _runtime
from ._runtime import ShutdownCall
from ._validation import as_integer, check_count, check_wait_timeout, unused_call_kind
from ._web_health import PROMETHEUS_CONTENT_TYPE, health_answer, metrics_page, metrics_registry

try:
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse, Response
except ImportError as error:
    raise ImportError(
        'makeparallel.fastapi needs FastAPI: pip install "makeparallel[fastapi]"'
    ) from error

__all__ = ["CancelOnDisconnect", "lifespan", "router"]

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]

_log = logging.getLogger("makeparallel")

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left before the answer
#: Bytes of request body CancelOnDisconnect reads ahead of the app (nginx's default client_max_body_size).
READ_AHEAD_BYTES = 1 << 20
_READY_WAIT = 60.0  # seconds the lifespan waits for every prestarted worker
_READY_POLL = 0.01  # seconds between two looks at the pool
# Lifespans started and not yet ended in this process (two servers, or two apps of
# one): the pools are the process's, so the last to end shuts them down. The first
# shut the library down under the others, whose requests then failed.
_running = 0
# Set when the shutdown of the last lifespan to end has ended; None while none runs.
# A lifespan starting meanwhile waits for it: its start-up reopened the library, and
# the shutdown, on a thread of its own, then shut it down under the new server.
_stopping: threading.Event | None = None
_running_lock = threading.Lock()


def lifespan(
    *,
    backend: str | None = None,
    num_threads: int | str | None = None,
    num_workers: int | None = None,
    max_concurrent_tasks: int | None = None,
    async_cancel: str | None = None,
    prestart: bool = False,
    shutdown_timeout: float | None = 30.0,
    cancel_pending: bool = True,
    app_lifespan: Lifespan | None = None,
) -> Lifespan:
    """A lifespan function for ``FastAPI(lifespan=...)`` that owns the library's pools.

    Args:
        backend: the default backend (``mp.configure(backend=...)``).
        num_threads: size of the thread pool, or ``"auto"`` (``mp.configure_thread_pool``).
        num_workers: size of the process pool (``mp.configure_process_pool``).
        max_concurrent_tasks: a global limit on tasks in flight
            (``mp.set_max_concurrent_tasks``); from a request, a call over it
            returns at once and the task waits for its slot.
        async_cancel: ``"force"`` stops a process task's worker when the request
            awaiting it is cancelled (a client that disconnected, with
            :class:`CancelOnDisconnect`), see
            ``mp.configure``.
        prestart: start the process pool's workers at start-up
            (``mp.configure_process_pool(prestart=True)``) and wait, without
            blocking the loop, until each is ready (its initializer ran), so that
            the first requests do not pay for starting interpreters. The wait
            lasts at most 60 seconds: past it (a slow initializer, or one that
            never returns) the server starts anyway, with a warning saying how
            many workers were ready. A worker initializer that fails makes
            start-up fail with its error. The thread pool needs no prestart:
            its threads start in microseconds.
        shutdown_timeout: seconds shutdown waits for unfinished tasks before the
            workers are stopped anyway (``None``: as long as it takes); a
            Ctrl-C during the wait ends it. Only the last lifespan of the
            process to end shuts down: the pools are shared by every app. One
            that starts meanwhile waits for that shutdown to end first.
        cancel_pending: cancel the tasks that have not started at shutdown.
        app_lifespan: your own lifespan function, run inside this one (the pools
            are up when it starts and still up when it ends); what it yields is
            the lifespan state.

    Returns:
        A function of the app that returns an async context manager.

    Raises:
        ValueError, TypeError: an option is invalid (at once, not at start-up);
            TypeError also where ``app_lifespan`` is no lifespan function: the
            context manager one returns, or an async generator function not
            decorated with ``@contextlib.asynccontextmanager`` (a generator
            function, an ``async def`` that does not yield too).
        ImportError, RuntimeError: ``backend`` cannot run here (at once too):
            ``"dask"`` where distributed is not installed, ``"interpreter"``
            before Python 3.14.
        WorkerCrashedError: at start-up, with ``prestart``: the worker
            initializer raised (its exception is the ``__cause__``).
    """
    mp.parallel(backend=backend, async_cancel=async_cancel)  # checks both now; applied at start-up
    # The rest are checked now too: a shutdown_timeout of -1 failed the shutdown
    # itself, and the worker processes outlived the server.
    check_wait_timeout(shutdown_timeout, "shutdown_timeout")
    if isinstance(num_threads, str):
        if num_threads != "auto":
            raise TypeError(f'num_threads must be an int >= 1, "auto" or None, got {num_threads!r}')
    elif num_threads is not None:
        num_threads = check_count(num_threads, "num_threads")
    if num_workers is not None:
        num_workers = check_count(num_workers, "num_workers")
    # 0, like None, sets no limit; but not False or 0.0, which set_max_concurrent_tasks refused at start-up
    if max_concurrent_tasks is not None and as_integer(max_concurrent_tasks) != 0:
        max_concurrent_tasks = check_count(max_concurrent_tasks, "max_concurrent_tasks")
    for name, switch in (("prestart", prestart), ("cancel_pending", cancel_pending)):
        if not isinstance(switch, bool):  # the string "false" (from the environment) read as true
            raise TypeError(f"{name} must be a bool, got {switch!r}")
    if app_lifespan is not None:
        _check_app_lifespan(app_lifespan)

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        global _running, _stopping
        await _counted_and_reopened_once_no_shutdown_runs()  # a server started again in this process takes tasks again
        try:
            if backend is not None:
                mp.configure(backend=backend)
            if async_cancel is not None:
                mp.configure(async_cancel=async_cancel)
            if num_threads is not None:
                mp.configure_thread_pool(num_threads=num_threads)
            if num_workers is not None or prestart:
                mp.configure_process_pool(num_workers=num_workers, prestart=prestart)
            if max_concurrent_tasks is not None:
                mp.set_max_concurrent_tasks(max_concurrent_tasks)
        except BaseException:
            with _running_lock:  # not counted: one whose start-up failed never ends
                _running -= 1
            raise
        try:
            if prestart:
                await _workers_ready()
            if app_lifespan is None:
                yield None
            else:
                async with app_lifespan(app) as state:
                    yield state
        finally:
            with _running_lock:
                _running -= 1
                stopping = _stopping = threading.Event() if _running == 0 else None
            if stopping is not None:  # else another server of this process still serves: the pools are still its
                await _shut_down_off_the_loop(shutdown_timeout, cancel_pending, stopping)

    return run


def _check_app_lifespan(app_lifespan: Any) -> None:
    """Raise TypeError unless ``app_lifespan`` looks like a lifespan function (the app to an async context manager).

    Each mistake failed only at start-up, with the pools configured, and
    said nothing of the argument: an undecorated async generator function
    (``'async_generator' object does not support the asynchronous context
    manager protocol``), a plain generator function or an ``async def``
    that does not yield (the same, of a generator or a coroutine), each also
    as an object's ``__call__`` or behind ``functools.partial``; or the
    context manager such a function returns (``my_lifespan(app)``, whose
    call then decorated the app).
    """
    rule = "app_lifespan must be a lifespan function, which takes the app and returns an async context manager"
    # Such a call returns a context manager that is callable too, as a decorator of functions: refused
    # by that. Another that is callable (its __call__ takes the app) is a lifespan function, as Starlette's.
    if isinstance(app_lifespan, AbstractAsyncContextManager) and (
        isinstance(app_lifespan, contextlib.AsyncContextDecorator) or not callable(app_lifespan)
    ):
        raise TypeError(f"{rule}, got the context manager {app_lifespan!r}: pass the function itself, not its call")
    if not callable(app_lifespan):
        raise TypeError(f"{rule}, got {app_lifespan!r}")
    made = unused_call_kind(app_lifespan)
    if made is not None and made[0] != "a class":  # a class may make an async context manager: taken
        raise TypeError(
            f"{rule}, got {made[0]}, {app_lifespan!r}: pass an async def that yields once (what it yields "
            "is the state), decorated with @contextlib.asynccontextmanager"
        )


async def _counted_and_reopened_once_no_shutdown_runs() -> None:
    """Count a lifespan as running, and reopen the library, once the shutdown of the last one to end (if one runs) has ended.

    And once no other shutdown stops the worker processes
    (``_runtime.reset_shutdown_unless_one_stops``: looked for and reopened in
    one hold of the runtime's lock; looked for first and reopened after, a
    shutdown that began stopping them in between was reopened under).

    Counted in the same step as that check, so that a lifespan ending meanwhile
    sees this one and leaves the pools to it. Waited for in slices of the loop,
    as the other server's shutdown runs on a thread of its own: up to its
    ``shutdown_timeout``, or for good with ``None`` while a task never ends.
    """
    global _running, _stopping
    while True:
        with _running_lock:
            if _stopping is not None and _stopping.is_set():
                _stopping = None
            # Nor another shutdown stopping the workers (the program's mp.shutdown() in another
            # thread): reopened under it, the library took tasks as it stopped them.
            if _stopping is None and _runtime.reset_shutdown_unless_one_stops():
                _running += 1
                return
            stopping = _stopping
        while not (stopping.is_set() if stopping is not None else not _runtime.shutdown_runs()):
            await asyncio.sleep(SLICE)


async def _shut_down_off_the_loop(timeout: float | None, cancel_pending: bool, ended: threading.Event) -> None:
    """``mp.shutdown(timeout, cancel_pending)`` on a daemon thread of its own, awaited without blocking the loop; ``ended`` is set as it ends.

    Its bounded wait must not stall the loop, which still finishes requests.
    Not in the loop's default executor: ``asyncio.run`` joins that executor's
    threads as it ends, and interpreter exit joins them again, so a lifespan
    cancelled in its shutdown (Ctrl-C under ``asyncio.run``, a server giving
    up on it) still waited out the whole timeout. Cancelled, this returns at
    once; the shutdown goes on in its thread, and exit waits for nothing more,
    as after any ``shutdown()``.

    Cancellation:
        A server takes Ctrl-C for itself (uvicorn's second one "forces quit",
        but not a lifespan already shutting down): none reached this wait, and
        the server waited out the whole timeout, for good with ``None``. So a
        Ctrl-C meanwhile, on a loop in the main thread, also ends the wait (this
        returns), and then goes to the handler that was there. The loop wakes
        every ``SLICE`` seconds meanwhile: a Ctrl-C that lands on another
        thread, or just before the loop sleeps, cuts no sleep short, and its
        handler runs only once the main thread runs Python again.

    Raises:
        asyncio.CancelledError: the lifespan was cancelled meanwhile.
        Exception: what ``mp.shutdown`` raised, in its thread.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    # Remembered as the lifespan's, and told of a Ctrl-C that ends the wait here
    # (its thread waits on): exit's warning about the tasks left then names
    # shutdown_timeout, or the Ctrl-C, not a shutdown() the program never called.
    call = ShutdownCall("the makeparallel.fastapi lifespan's shutdown", "raise lifespan(shutdown_timeout=...)")

    def settle(error: BaseException | None) -> None:
        if done.done():  # the lifespan gave up waiting
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def stop() -> None:
        error: BaseException | None = None
        try:
            call.run(timeout, cancel_pending)
        except BaseException as caught:  # noqa: BLE001  # given back to the lifespan, on its loop
            error = caught
        finally:
            ended.set()  # by the thread: a lifespan that stops waiting here leaves it running
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop closed: nobody waits for it any more
            pass

    def on_ctrl_c() -> None:
        call.interrupted()
        loop.call_soon_threadsafe(settle, None)

    with _also_on_ctrl_c(on_ctrl_c):  # before the wait can begin
        try:
            threading.Thread(target=stop, name="makeparallel-lifespan-shutdown", daemon=True).start()
        except BaseException:
            ended.set()  # no shutdown runs: the next lifespan must not wait for one
            raise
        try:
            while not done.done():  # in slices, or a Ctrl-C may wait for good: see _interruptible
                await asyncio.wait((done,), timeout=SLICE)
        except BaseException:
            # Cancelled: the shutdown's error, set later, would be nobody's, and
            # logged as "Future exception was never retrieved". Done, settle drops it.
            done.cancel()
            raise
        await done


@contextlib.contextmanager
def _also_on_ctrl_c(callback: Callable[[], object]) -> Iterator[None]:
    """Have a Ctrl-C (``SIGINT``) call ``callback`` first, then the Python handler already there.

    Only in the main thread, where handlers are set, and only over a Python
    handler: an ignored or default ``SIGINT`` is left as it is. The handler
    that was there is put back at the end, unless another replaced ours.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):
        yield
        return

    def on_ctrl_c(signum: int, frame: Any) -> Any:
        callback()
        return previous(signum, frame)

    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is on_ctrl_c:
            signal.signal(signal.SIGINT, previous)


async def _workers_ready() -> None:
    """Wait until every process worker started by ``prestart`` is ready; raise if they cannot start.

    A no-op task on the first worker ready surfaces an initializer's failure
    (after three failed starts the pool gives up, and the task fails with the
    initializer's error). The whole wait, that task's included, lasts at most
    ``_READY_WAIT`` seconds, in short sleeps of the loop: the pool has no event
    for each worker's readiness, and a worker that is slow to start, or whose
    initializer never returns, must not stop the server from starting (the
    task was awaited with no bound, and start-up hung for good). Past it, the
    task is cancelled (no worker ran it) and a warning says how many were ready.
    A start-up cancelled meanwhile cancels the task too: left queued, it held
    the shutdown that follows (for good with no ``shutdown_timeout`` and
    ``cancel_pending=False``), as the awaited task had not.
    """
    probe = mp.parallel(name="makeparallel.prestart", backend="process")(int)  # a builtin: nothing to pickle by value
    first = probe()
    give_up = time.monotonic() + _READY_WAIT
    try:
        while time.monotonic() < give_up:
            if first.is_ready():
                first.get()  # an initializer's failure, raised
                info = mp.get_process_pool_info()
                if info["ready_workers"] >= info["num_workers"]:
                    return
            await asyncio.sleep(_READY_POLL)
    finally:
        # Still queued, if no worker got ready: it would wait for the first, and the shutdown
        # for it. Cancelled too where the start-up is (a server giving up on it), as it was awaited.
        first.cancel()
    info = mp.get_process_pool_info()
    _log.warning(
        "%d of %d process workers ready after %g s at start-up; serving anyway",
        info["ready_workers"],
        info["num_workers"],
        _READY_WAIT,
    )


class _HealthResponse(JSONResponse):
    """A health report as JSON with every non-ASCII character escaped, as Flask's ``jsonify`` writes it.

    Starlette writes JSON in UTF-8, which a lone surrogate cannot be: a file
    name that is not UTF-8 (``os.fsdecode(b"\\xff")``) in a pool's error, the
    report's reason, failed both probes with an HTTP 500, the liveness probe
    of a live process too.
    """

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def router(*, prefix: str = "", registry: Any = None, include_in_schema: bool = False) -> APIRouter:
    """An ``APIRouter`` with ``GET /health/live``, ``/health/ready`` and ``/metrics``, and ``HEAD`` for each.

    Args:
        prefix: a path prefix for the three routes (``""``: at the root), as
            Flask's ``MAKEPARALLEL_URL_PREFIX``: ``"/ops"``, ``"/ops/"`` and
            ``"/"`` (the root) are taken.
        registry: the ``prometheus_client`` registry to serve at ``/metrics``,
            with the library's collector added; default: a registry of its own
            holding only the library's metrics.
        include_in_schema: list the routes in the OpenAPI schema.

    Returns:
        The router, for ``app.include_router(...)``.

    Raises:
        ImportError: prometheus-client is not installed.
        TypeError: ``prefix`` is not a string, or ``registry`` is no
            ``prometheus_client`` registry, with ``register()`` and
            ``collect()`` (a port, the registry class).
        ValueError: ``prefix`` is neither ``""`` nor a path that starts with
            ``"/"``; or ``registry`` has another collector of one of the
            library's metric names: ``/metrics`` would serve none of the library's.
    """
    if not isinstance(prefix, str):
        raise TypeError(f'prefix must be "" or a path that starts with "/" ("/ops"), got {prefix!r}')
    if prefix[:1] not in ("", "/"):
        raise ValueError(f'prefix must be "" or a path that starts with "/" ("/ops"), got {prefix!r}')
    served = metrics_registry(registry)
    # FastAPI asserts there is no trailing "/" (an AssertionError, skipped under python -O,
    # where "/" put the routes at "//health/live"); Flask takes one: so does this.
    routes = APIRouter(prefix=prefix.rstrip("/"), include_in_schema=include_in_schema)

    @routes.get("/health/live")
    async def live() -> JSONResponse:
        """200 while the library makes progress, else 503."""
        code, body = health_answer("live")
        return _HealthResponse(body, status_code=code)

    @routes.get("/health/ready")
    async def ready() -> JSONResponse:
        """503 only when the library cannot take work; degraded answers 200."""
        code, body = health_answer("ready")
        return _HealthResponse(body, status_code=code)

    @routes.get("/metrics")
    async def metrics() -> Response:
        """The library's metrics in the Prometheus text format."""
        return Response(metrics_page(served), media_type=PROMETHEUS_CONTENT_TYPE)

    # HEAD too, as Flask and Starlette answer it for every GET route: uptime monitors
    # probe with it, and FastAPI answered 405. Kept out of the schema, where each would add
    # an operation that only repeats the GET, and repeat its operation id too under a
    # generate_unique_id_function that reads the route's name only (FastAPI's own adds the method).
    for path, endpoint in (("/health/live", live), ("/health/ready", ready), ("/metrics", metrics)):
        routes.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
    return routes


class CancelOnDisconnect:
    """ASGI middleware: a client that disconnects before its response ended cancels its request.

    The request's coroutine is cancelled as ``asyncio.timeout`` would cancel it,
    so the handles it awaits are cancelled with it (a queued task never runs, a
    running one is asked to stop, or its worker stopped with
    ``async_cancel="force"``). What runs after the response was sent (Starlette's
    background tasks) is never cancelled. Other scopes (websockets, lifespan)
    pass through untouched. A request cancelled before its response started
    answers 499 (nginx's "client closed request"), which the server drops: any
    middleware around this one still gets a response. Add it last, so that it
    wraps the others and their work is cancelled too.

    The middleware is the only reader of the server's ``receive``: it hands the
    request body to the app one message at a time, and watches for
    ``http.disconnect`` once the body was read. It reads up to
    ``READ_AHEAD_BYTES`` (1 MiB) of body ahead of the app, so that a client
    that leaves is noticed while the app awaits its tasks without reading the
    body; past that, the app paces the upload, and a client that leaves as the
    rest waits is noticed once the app reads on. (Reading one message ahead,
    a 300 KB body that the app never read hid the disconnect: the task ran to
    its end for nobody.)

    Args:
        app: the ASGI app to wrap; with FastAPI or Starlette, write
            ``app.add_middleware(CancelOnDisconnect)``.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        ahead = 0  # bytes of body read and not yet taken by the app
        taken = asyncio.Event()
        disconnected: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        response_started = response_ended = False

        async def read() -> None:
            nonlocal ahead
            while True:
                while ahead >= READ_AHEAD_BYTES:  # the app paces the rest of the upload
                    taken.clear()
                    await taken.wait()
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set_result(message)
                    return
                ahead += len(message.get("body", b""))
                body.put_nowait(message)

        async def app_receive() -> dict[str, Any]:
            nonlocal ahead
            if body.empty() and disconnected.done():
                return disconnected.result()
            next_body = asyncio.ensure_future(body.get())
            try:
                await asyncio.wait((next_body, disconnected), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not next_body.done():
                    next_body.cancel()
            if not next_body.done() or next_body.cancelled():
                return disconnected.result()
            message = next_body.result()
            ahead -= len(message.get("body", b""))
            taken.set()
            return message

        async def app_send(message: dict[str, Any]) -> None:
            nonlocal response_started, response_ended
            await send(message)
            response_started = True
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_ended = True

        reader = asyncio.ensure_future(read())
        request = asyncio.ensure_future(self.app(scope, app_receive, app_send))  # in this context
        client_left = False
        try:
            await asyncio.wait((request, disconnected), return_when=asyncio.FIRST_COMPLETED)
            if not request.done() and not response_ended:
                client_left = request.cancel()  # nobody will read the answer
            try:
                await request
            except asyncio.CancelledError:
                if not client_left:
                    raise  # the server cancelled this request (its shutdown), not the client
                if not response_started:  # an answer nobody reads, for what wraps this app
                    await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": []})
                    await send({"type": "http.response.body", "body": b""})
        finally:
            reader.cancel()
            if not request.done():  # this middleware was cancelled (the server's shutdown): so is the app
                request.cancel()
                # and it ends before this does, as it would unwrapped: else its cleanup
                # ran on after the server had moved on to the lifespan's shutdown.
                await asyncio.wait((request,))
