"""makeparallel.fastapi on a real uvicorn server on 127.0.0.1, with real httpx clients."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psutil
import pytest

import makeparallel as mp
from pool_helpers import Flags, process_alive, wait_until
from web_helpers import (
    WrappedRegistry,
    check_live_fails_for_good,
    run_fresh_interpreter,
    shutdown_begun_after_the_look,
    uvicorn_server,
)
from web_tasks import count_primes, refuse_to_start, wait_until_released

fastapi = pytest.importorskip("fastapi")
prometheus_registry = pytest.importorskip("prometheus_client.registry")
from makeparallel.fastapi import CancelOnDisconnect, lifespan, router  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def cpu_app(**options: Any) -> Any:
    app = fastapi.FastAPI(lifespan=lifespan(**options))
    app.include_router(router())

    @app.get("/primes/{limit}")
    async def primes(limit: int) -> dict[str, int]:
        return {"primes": await count_primes(limit)}

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    @app.get("/hold/{name}")
    async def hold(name: str, directory: str) -> int:
        return await wait_until_released(Flags(directory), name)  # type: ignore[no-any-return]

    return app


def test_200_concurrent_requests_on_the_process_backend_all_succeed() -> None:
    app = cpu_app(num_workers=2, prestart=True, shutdown_timeout=10)
    expected = count_primes.__wrapped__(3000)

    async def main(base: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=100) as client:
            return await asyncio.gather(*(client.get("/primes/3000") for _ in range(200)))

    with uvicorn_server(app) as (base, _):
        responses = asyncio.run(main(base))
    assert {r.status_code for r in responses} == {200}
    assert [r.json()["primes"] for r in responses] == [expected] * 200


def test_the_loop_answers_while_200_requests_await_process_tasks(tmp_path: Any) -> None:
    # The 200 tasks are held until the pings were answered. A loop blocked by a
    # request waiting for its task takes in no other request and answers no ping
    # before the release: the wait for all 200 in the pool, or a ping, times out.
    # No measured time decides it.
    flags = Flags(str(tmp_path))
    app = cpu_app(num_workers=2, prestart=True, shutdown_timeout=10)

    def all_in_the_pool() -> bool:
        info = mp.get_process_pool_info()
        return bool(info["busy_workers"] == 2 and info["active_tasks"] == 200)

    async def main(base: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=100) as client:
            held = [
                asyncio.ensure_future(client.get(f"/hold/r{i}", params={"directory": str(tmp_path)}))
                for i in range(200)
            ]
            deadline = time.monotonic() + 60
            while not all_in_the_pool():
                assert time.monotonic() < deadline, f"not all in the pool: {mp.get_process_pool_info()}"
                await asyncio.sleep(0.01)
            for _ in range(20):
                answer = await client.get("/ping", timeout=30)
                assert answer.text == '"pong"'
            assert not any(request.done() for request in held), "a held request ended before its release"
            flags.set("teardown")
            return await asyncio.gather(*held)

    with uvicorn_server(app) as (base, _):
        try:
            responses = asyncio.run(main(base))
        finally:
            flags.set("teardown")  # before the server stops: it waits for its requests
    assert {r.status_code for r in responses} == {200}
    assert len({r.json() for r in responses}) <= 2  # the pool's two workers ran them all


def test_prestart_has_every_process_worker_ready_before_the_first_request() -> None:
    app = cpu_app(num_workers=2, prestart=True, shutdown_timeout=10)
    with uvicorn_server(app) as (base, _):
        info = mp.get_process_pool_info()  # start-up ended; no request was sent yet
        assert info["ready_workers"] == 2, info
        with httpx.Client(base_url=base, timeout=60) as client:
            answers = [client.get("/primes/100") for _ in range(4)]
        assert {a.status_code for a in answers} == {200}
        assert mp.get_process_pool_info()["worker_pids"] == info["worker_pids"]  # none started for them


def test_prestart_fails_start_up_with_the_worker_initializers_error() -> None:
    app = fastapi.FastAPI(lifespan=lifespan(num_workers=1, prestart=True, shutdown_timeout=10))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass  # pragma: no cover - start-up fails

    mp.configure_process_pool(initializer=int, initargs=("not a number",))  # raises ValueError in each worker
    try:
        with pytest.raises(mp.WorkerCrashedError, match="initializer int raised ValueError") as caught:
            asyncio.run(start())
        assert isinstance(caught.value.__cause__, ValueError)
    finally:
        mp.configure_process_pool(initializer=None)


@pytest.mark.timeout(90)
def test_prestart_serves_anyway_when_no_worker_gets_ready_in_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The worker's initializer never returns. The lifespan first awaited a no-op task,
    # with no bound, and the server never started; its wait is bounded as a whole.
    import makeparallel.fastapi as integration

    monkeypatch.setattr(integration, "_READY_WAIT", 0.5)
    app = cpu_app(num_workers=1, prestart=True, shutdown_timeout=1)
    before = {child.pid for child in _live_children()}
    mp.configure_process_pool(initializer=time.sleep, initargs=(3600,))  # a worker that never gets ready
    try:
        with caplog.at_level("WARNING", logger="makeparallel"), uvicorn_server(app) as (base, _):
            info = mp.get_process_pool_info()
            assert info["ready_workers"] == 0 and info["active_tasks"] == 0, info  # the probe did not stay queued
            assert httpx.get(f"{base}/ping", timeout=30).text == '"pong"'
            # The template may not have forked the worker yet, with the machine busy.
            assert wait_until(lambda: mp.get_process_pool_info()["worker_pids"], 30), mp.get_process_pool_info()
            workers = mp.get_process_pool_info()["worker_pids"]
    finally:
        mp.configure_process_pool(initializer=None)
    assert "0 of 1 process workers ready after 0.5 s at start-up; serving anyway" in caplog.text, caplog.text
    assert wait_until(lambda: not any(process_alive(pid) for pid in workers), 30), "the stuck worker outlived the server"
    assert wait_until(lambda: not _new_children(before), 30), f"child processes are left: {_new_children(before)}"


@pytest.mark.timeout(90)
def test_a_start_up_cancelled_as_prestart_waits_leaves_no_probe_for_the_shutdown_to_wait_for() -> None:
    # A server that gives up on start-up (a start-up timeout, Ctrl-C under asyncio.run)
    # cancels the lifespan as it waits for the workers. Its no-op probe task, once
    # awaited, was cancelled with it; polled, it stayed queued for a worker that never
    # got ready, and the shutdown that follows (no shutdown_timeout, cancel_pending off)
    # waited for it for good.
    app = fastapi.FastAPI(lifespan=lifespan(num_workers=1, prestart=True, shutdown_timeout=None, cancel_pending=False))
    before = {child.pid for child in _live_children()}

    async def start_then_give_up() -> tuple[bool, dict[str, Any]]:
        async def start() -> None:
            async with app.router.lifespan_context(app):
                pass  # pragma: no cover - start-up is cancelled

        starting = asyncio.create_task(start())
        while not mp.get_process_pool_info()["active_tasks"]:  # the probe is queued: the wait began
            assert not starting.done(), starting
            await asyncio.sleep(0.01)
        starting.cancel()
        done, _ = await asyncio.wait({starting}, timeout=30)
        return bool(done), mp.get_process_pool_info()

    mp.configure_process_pool(initializer=time.sleep, initargs=(3600,))  # a worker that never gets ready
    try:
        shut_down, info = asyncio.run(start_then_give_up())
    finally:
        mp.configure_process_pool(initializer=None)
    assert info["active_tasks"] == 0, info  # the probe did not stay queued
    assert shut_down, "the cancelled start-up's shutdown waited for good for the probe"
    assert wait_until(lambda: not _new_children(before), 30), f"child processes are left: {_new_children(before)}"


def test_stopping_the_server_with_requests_in_flight_is_prompt_and_leaves_no_worker(tmp_path: Any) -> None:
    flags = Flags(str(tmp_path))
    app = cpu_app(num_workers=2, shutdown_timeout=1, async_cancel="force")
    requests: list[threading.Thread] = []
    before = {child.pid for child in _live_children()}  # processes earlier tests left running

    def request(base: str, name: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{base}/hold/{name}", params={"directory": str(tmp_path)}, timeout=60)

    try:
        with uvicorn_server(app, graceful=0.5) as (base, _):
            for name in ("a", "b", "c"):  # running or queued, as the pool dispatches them
                thread = threading.Thread(target=request, args=(base, name), name=f"test-client-{name}")
                thread.start()
                requests.append(thread)
            names = ("a", "b", "c")
            assert wait_until(lambda: any(flags.is_set(f"started-{n}") for n in names), 60), "no task started"
            workers = mp.get_process_pool_info()["worker_pids"]
            assert workers
            stopping = time.monotonic()
        took = time.monotonic() - stopping
    finally:
        flags.set("teardown")
        for thread in requests:
            thread.join(30)
    assert took < 30, f"stopping took {took:.1f} s"
    assert wait_until(lambda: not any(process_alive(pid) for pid in workers), 10), "a worker process outlived the server"
    # Workers started to replace the killed ones are stopped too (by the pool's loop thread).
    assert wait_until(lambda: not _new_children(before), 30), f"child processes are left: {_new_children(before)}"


def _new_children(before: set[int]) -> list[psutil.Process]:
    return [child for child in _live_children() if child.pid not in before]


def _live_children() -> list[psutil.Process]:
    return [child for child in psutil.Process().children(recursive=True) if process_alive(child.pid)]


@pytest.mark.parametrize(("prefix", "path"), [("/ops", "/ops"), ("/ops/", "/ops"), ("/", ""), ("", "")])
def test_the_router_takes_a_prefix_as_flask_does(prefix: str, path: str) -> None:
    # "/ops/" and "/" met FastAPI's own AssertionError (none the docstring lists), which
    # python -O skips: the routes then landed at "//health/live". Flask takes them.
    app = fastapi.FastAPI()
    app.include_router(router(prefix=prefix))
    with uvicorn_server(app) as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        for route in ("/health/live", "/health/ready", "/metrics"):
            assert client.get(path + route).status_code == 200, route


@pytest.mark.parametrize(("prefix", "error"), [("ops", ValueError), (b"/ops", TypeError), (None, TypeError)])
def test_the_router_refuses_a_prefix_that_is_no_path(prefix: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=r'prefix must be "" or a path that starts with "/"'):
        router(prefix=prefix)


@pytest.mark.parametrize(
    "registry",
    [prometheus_registry, "default", 9100, prometheus_registry.CollectorRegistry],
    ids=["module", "str", "port", "class"],
)
def test_the_router_refuses_what_is_no_registry_saying_none_makes_one_of_its_own(registry: Any) -> None:
    # Refused by register(), whose message offered None for the global registry: the router's None
    # serves a registry of its own. Before that check, an AttributeError from inside the library.
    with pytest.raises(TypeError, match=r"registry must be a prometheus_client registry .*or None for one of its own.*, got "):
        router(registry=registry)


def test_the_router_serves_a_registry_of_another_kind() -> None:
    # Read by its register() and collect(), not by its class: a check of the class would refuse a
    # registry that the routes served before any check, and start_http_server() serves.
    app = fastapi.FastAPI()
    app.include_router(router(registry=WrappedRegistry()))
    with uvicorn_server(app) as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        page = client.get("/metrics")
    assert page.status_code == 200 and "makeparallel_tasks_total" in page.text


def test_the_routes_answer_head_as_flasks_do() -> None:
    # FastAPI answered HEAD with 405 (Flask and Starlette take it for every GET route):
    # an uptime monitor that probes with HEAD saw the service down.
    app = fastapi.FastAPI()
    app.include_router(router(include_in_schema=True))
    with uvicorn_server(app) as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        for route in ("/health/live", "/health/ready", "/metrics"):
            head = client.head(route)
            assert head.status_code == 200, route
            assert head.content == b""
            assert head.headers["content-type"] == client.get(route).headers["content-type"]
        mp.shutdown(timeout_secs=10)
        assert client.head("/health/ready").status_code == 503  # answered as GET is
        mp.reset_shutdown()
        paths = client.get("/openapi.json").json()["paths"]  # listed once, as GET: no duplicate operation id
    assert {path: list(operations) for path, operations in paths.items()} == {
        "/health/live": ["get"],
        "/health/ready": ["get"],
        "/metrics": ["get"],
    }


def test_health_routes_follow_the_status_rules(gate: threading.Event) -> None:
    app = fastapi.FastAPI(lifespan=lifespan(shutdown_timeout=10))
    app.include_router(router(prefix="/ops"))
    held = mp.parallel(lambda: gate.wait(30))

    with uvicorn_server(app) as (base, _):
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/ops/health/live").status_code == 200
            ready = client.get("/ops/health/ready")
            assert ready.status_code == 200 and ready.json()["status"] == "ok"

            mp.set_max_concurrent_tasks(1)  # one task in flight at the limit: degraded, still ready
            handle = held()
            ready = client.get("/ops/health/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "degraded"
            gate.set()
            handle.get(30)
            mp.set_max_concurrent_tasks(None)

            mp.shutdown(timeout_secs=10)  # cannot take work: not ready, but alive
            ready = client.get("/ops/health/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "unhealthy"
            assert client.get("/ops/health/live").status_code == 200
            mp.reset_shutdown()

            page = client.get("/ops/metrics")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/plain")
            assert 'makeparallel_tasks_total{function="test_health_routes_follow_the_status_rules.<locals>.<lambda>",status="completed"} 1.0' in page.text


def test_health_routes_answer_a_reason_that_utf8_cannot_encode_escaped() -> None:
    # A file name that is not UTF-8 (os.fsdecode(b"\xff")) in a pool's error holds a lone surrogate:
    # Starlette wrote the JSON body in UTF-8, so both probes failed with an HTTP 500, the liveness
    # probe of a process that was live too, where Flask's jsonify escapes it.
    path = os.fsdecode(b"model-\xff.bin")
    mp.configure_process_pool(num_workers=1, initializer=refuse_to_start, initargs=(path,))
    try:
        task = mp.parallel(backend="process")(abs)
        for _ in range(10):  # the pool gives up after a few failed starts in a row
            if mp.get_process_pool_info()["refusing_tasks"]:
                break
            with pytest.raises(mp.WorkerCrashedError, match="cannot load model-"):
                task(-1).get(60)
        assert mp.get_process_pool_info()["refusing_tasks"]
        app = fastapi.FastAPI()
        app.include_router(router())
        with uvicorn_server(app) as (base, _), httpx.Client(base_url=base, timeout=30) as client:
            ready = client.get("/health/ready")
            assert ready.status_code == 503, ready.text
            assert "\\udcff" in ready.text  # escaped in the body: it is ASCII
            assert any(f"cannot load {path}" in reason for reason in ready.json()["reasons"])
            live = client.get("/health/live")
            assert live.status_code == 200, live.text
            assert live.json()["status"] == "unhealthy"
    finally:
        mp.configure_process_pool(initializer=None)


@pytest.mark.parametrize("fault", ["thread", "process"])
def test_health_live_answers_503_once_a_pool_thread_died(fault: str) -> None:
    """A worker thread, or the process pool's loop thread, dies of an error: restart the process."""
    check_live_fails_for_good("fastapi", fault)


def test_the_lifespan_composes_with_the_apps_own_and_shuts_down_after_it() -> None:
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def own(app: Any) -> AsyncIterator[dict[str, Any]]:
        seen.append(f"start: {await mp.parallel(abs)(-2)}")  # the pools are up inside
        yield {"greeting": "hello"}
        seen.append(f"stop: {await mp.parallel(abs)(-3)}")  # and still up at the end

    app = fastapi.FastAPI(lifespan=lifespan(app_lifespan=own, num_threads=3, shutdown_timeout=10))

    @app.get("/greeting")
    async def greeting(request: fastapi.Request) -> str:
        return request.state.greeting  # type: ignore[no-any-return]

    with uvicorn_server(app) as (base, _):
        assert httpx.get(f"{base}/greeting", timeout=30).json() == "hello"
        assert mp.get_thread_pool_info()["num_threads"] == 3
    assert seen == ["start: 2", "stop: 3"]
    with pytest.raises(mp.ShutdownError):
        mp.parallel(abs)(-1)  # the lifespan shut the library down


def test_two_servers_in_one_process_the_pools_shut_down_with_the_last() -> None:
    """The first server to stop shut the library down under the other, whose requests then failed."""

    @mp.parallel
    def doubled(n: int) -> int:
        return 2 * n

    def app() -> Any:
        served = fastapi.FastAPI(lifespan=lifespan(shutdown_timeout=10))
        served.include_router(router())

        @served.get("/double/{n}")
        async def double(n: int) -> int:
            return await doubled(n)  # type: ignore[no-any-return]

        return served

    with uvicorn_server(app()) as (first, _):
        with uvicorn_server(app()) as (second, _):
            assert httpx.get(f"{second}/double/2", timeout=30).json() == 4
        assert httpx.get(f"{first}/health/ready", timeout=30).status_code == 200
        assert httpx.get(f"{first}/double/3", timeout=30).json() == 6
    with pytest.raises(mp.ShutdownError):
        doubled(1)  # the last lifespan shut the library down


def test_a_lifespan_whose_start_up_failed_leaves_the_next_one_to_shut_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted as running before its start-up, a failed lifespan kept every later one from shutting down."""

    def refuse(**_: Any) -> None:
        raise RuntimeError("no threads today")

    async def enter(app_lifespan: Any) -> None:
        async with app_lifespan(None):
            assert await mp.parallel(abs)(-1) == 1

    with monkeypatch.context() as patched:
        patched.setattr(mp, "configure_thread_pool", refuse)
        with pytest.raises(RuntimeError, match="no threads today"):
            asyncio.run(enter(lifespan(num_threads=2, shutdown_timeout=10)))
    asyncio.run(enter(lifespan(shutdown_timeout=10)))
    with pytest.raises(mp.ShutdownError):
        mp.parallel(abs)(-1)  # the one lifespan that ran shut the library down


@pytest.mark.timeout(60)
def test_a_lifespan_starting_while_the_last_one_shuts_down_waits_for_that_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shutdown, on a thread of its own, could run after the new lifespan's start-up reopened the library.

    The new server then served with the library shut down: every request failed
    with ``ShutdownError``. Its start-up now waits for that shutdown to end.
    """
    from makeparallel import _runtime

    gate = threading.Event()  # holds the shutdown as a thread not yet scheduled would
    run_shutdown = _runtime.ShutdownCall.run

    def held(self: Any, *args: Any) -> Any:
        assert gate.wait(30)
        return run_shutdown(self, *args)

    monkeypatch.setattr(_runtime.ShutdownCall, "run", held)

    async def main() -> int:
        first, second = lifespan(shutdown_timeout=10)(None), lifespan(shutdown_timeout=10)(None)
        await first.__aenter__()
        ending = asyncio.ensure_future(first.__aexit__(None, None, None))
        await asyncio.sleep(0)  # the first is the last to end: its shutdown begins
        starting = asyncio.ensure_future(second.__aenter__())
        await asyncio.sleep(0)
        gate.set()
        await ending
        await starting
        try:
            return await mp.parallel(abs)(-1)  # type: ignore[no-any-return]
        finally:
            await second.__aexit__(None, None, None)

    assert asyncio.run(main()) == 1
    with pytest.raises(mp.ShutdownError):
        mp.parallel(abs)(-1)  # the second lifespan, the last, shut the library down


def test_a_lifespan_starting_while_the_program_shuts_down_in_another_thread_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only a lifespan's own shutdown was waited for: a program's mp.shutdown()
    # in another thread went on stopping the workers under the reopened library.
    from makeparallel import _runtime

    stopping, go, terminated, polled = (threading.Event() for _ in range(4))
    terminate_all, shutdown_runs = _runtime.terminate_all, _runtime.shutdown_runs

    def held_terminate_all(*args: Any) -> None:
        stopping.set()
        assert go.wait(30), "the test never let the shutdown go on"
        terminate_all(*args)
        terminated.set()

    def polled_shutdown_runs() -> bool:
        polled.set()
        return shutdown_runs()

    monkeypatch.setattr(_runtime, "terminate_all", held_terminate_all)
    monkeypatch.setattr(_runtime, "shutdown_runs", polled_shutdown_runs)

    async def main() -> bool:
        started = lifespan(shutdown_timeout=10)(None)
        shutting_down = threading.Thread(target=mp.shutdown, args=(10,))
        shutting_down.start()
        try:
            assert await asyncio.get_running_loop().run_in_executor(None, stopping.wait, 30)
            starting = asyncio.ensure_future(started.__aenter__())
            while not (polled.is_set() or starting.done()):
                await asyncio.sleep(0)
            go.set()
            await starting
            over = terminated.is_set()
            assert await mp.parallel(abs)(-1) == 1
            await started.__aexit__(None, None, None)
            return over
        finally:
            go.set()
            shutting_down.join(30)

    assert asyncio.run(main()) is True


@pytest.mark.timeout(60)
def test_a_lifespan_starting_as_a_shutdown_begins_stopping_the_workers_does_not_reopen_under_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The start-up looked for a shutdown stopping the worker processes, then
    # reopened the library in a second step: the program's mp.shutdown() that
    # began stopping them in between was reopened under, the server's process
    # tasks failing with ShutdownError as it went on. The look and the reopening
    # are now one hold of the runtime's lock, which no shutdown comes between.
    from makeparallel import _runtime

    async def main() -> bool:
        started = lifespan(shutdown_timeout=10)(None)
        with shutdown_begun_after_the_look(monkeypatch, lambda: mp.shutdown(10)) as found:
            await started.__aenter__()
            reopened_under_a_shutdown = _runtime.shutdown_runs()
        assert (found, reopened_under_a_shutdown) == (["held"], False)
        try:
            return await mp.parallel(abs)(-1) == 1  # type: ignore[no-any-return]
        finally:
            await started.__aexit__(None, None, None)

    assert asyncio.run(main()) is True


@pytest.mark.timeout(60)
def test_a_lifespan_started_by_a_task_a_shutdown_waits_for_does_not_hold_that_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The start-up waited for any shutdown under way to end: one that waited
    # for the very task starting the server waited for good (timeout None),
    # here for its whole timeout. Only a shutdown stopping the workers is
    # waited for; one still waiting for its tasks stops none once reopened.
    from makeparallel import _runtime
    from makeparallel import fastapi as integration

    monkeypatch.setattr(integration, "_running", 0)  # the task's lifespan never ends: not counted after
    running = threading.Event()

    @mp.parallel(backend="thread")
    def starts_a_server() -> str:
        running.set()
        assert wait_until(_runtime.is_shut_down, 30), "the shutdown never began"
        asyncio.run(lifespan(shutdown_timeout=10)(None).__aenter__())
        return "started"

    handle = starts_a_server()
    assert running.wait(30)
    assert mp.shutdown(timeout_secs=30) is True  # the task ended within its wait
    assert handle.result() == "started"


def runs_until_cancelled(started: threading.Event, gate: threading.Event) -> mp.ParallelFunction[[], str]:
    """A task that sets ``started``, then runs until it is cancelled (or ``gate`` is set)."""

    @mp.parallel
    def until_cancelled() -> str:
        started.set()
        while not gate.wait(0.005):
            mp.check_cancelled()
        return "ended"

    return until_cancelled


def send_then_leave(base: str, request: bytes, started: threading.Event) -> None:
    """Send ``request`` as it is to the server at ``base``, and disconnect once its task ``started``."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(request)
        assert started.wait(30), "the task never started"


@pytest.mark.parametrize("inside", [False, True], ids=["outermost", "inside another middleware"])
def test_a_client_that_disconnects_cancels_the_task_its_request_awaits(gate: threading.Event, inside: bool) -> None:
    app = fastapi.FastAPI(lifespan=lifespan(shutdown_timeout=10))
    app.add_middleware(CancelOnDisconnect)
    if inside:  # a middleware added after it wraps it, and must still get a response

        @app.middleware("http")
        async def passing(request: fastapi.Request, call_next: Any) -> Any:
            return await call_next(request)

    handles: dict[str, mp.AsyncHandle[str]] = {}
    started = threading.Event()
    after_response = threading.Event()
    slow_ended = threading.Event()
    outcomes: list[BaseException | None] = []

    async def served(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The app, and how each /slow request ended, as the server sees it."""
        try:
            await app(scope, receive, send)
            outcomes.append(None)
        except BaseException as error:
            outcomes.append(error)
            raise
        finally:
            if scope.get("path") == "/slow":
                slow_ended.set()

    until_cancelled = runs_until_cancelled(started, gate)

    @app.get("/slow")
    async def slow() -> str:
        handles["slow"] = until_cancelled()
        return await handles["slow"]

    @app.post("/echo")
    async def echo(request: fastapi.Request, background: fastapi.BackgroundTasks) -> int:
        body = await request.body()
        background.add_task(after_response.set)  # runs after the response: never cancelled
        return len(body)

    with uvicorn_server(served) as (base, _):
        send_then_leave(base, b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n", started)
        assert slow_ended.wait(30), "the request outlived its client"
        assert outcomes[-1] is None, outcomes  # ended quietly, with a response for the middleware around
        # (the task may start before the route stored its handle)
        assert wait_until(lambda: "slow" in handles and handles["slow"].done(), 30), "the task outlived its client"
        assert handles["slow"].cancelled()
        assert httpx.post(f"{base}/echo", content=b"x" * 1_000_000, timeout=30).json() == 1_000_000
        assert after_response.wait(30)


def test_a_client_that_leaves_is_noticed_though_the_app_never_reads_its_large_body(gate: threading.Event) -> None:
    # The middleware read one message ahead of the app: the rest of a 300 KB upload that the
    # app never read hid the disconnect behind it, and the task ran to its end for nobody.
    app = fastapi.FastAPI(lifespan=lifespan(shutdown_timeout=10))
    app.add_middleware(CancelOnDisconnect)
    handles: list[mp.AsyncHandle[str]] = []
    started = threading.Event()

    until_cancelled = runs_until_cancelled(started, gate)

    @app.post("/job")
    async def job() -> str:  # takes no body
        handles.append(until_cancelled())
        return await handles[0]

    with uvicorn_server(app) as (base, _):
        send_then_leave(base, b"POST /job HTTP/1.1\r\nHost: test\r\nContent-Length: 300000\r\n\r\n" + b"x" * 300_000, started)
        assert wait_until(lambda: bool(handles) and handles[0].done(), 30), "the task outlived its client"
        assert handles[0].cancelled()


def test_awaiting_tasks_takes_no_token_of_starlettes_thread_limiter(gate: threading.Event) -> None:
    import anyio.to_thread

    app = fastapi.FastAPI(lifespan=lifespan(shutdown_timeout=10))
    started = threading.Barrier(11, timeout=30)

    @mp.parallel
    def blocking(n: int) -> int:
        started.wait()
        assert gate.wait(30)
        return n

    @app.get("/block/{n}")
    async def block(n: int) -> int:
        return await blocking(n)  # type: ignore[no-any-return]

    @app.get("/tokens")
    async def tokens() -> float:
        return anyio.to_thread.current_default_thread_limiter().borrowed_tokens  # type: ignore[no-any-return]

    mp.configure_thread_pool(num_threads=10)

    async def main(base: str) -> tuple[list[int], float]:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            work = asyncio.gather(*(client.get(f"/block/{n}") for n in range(10)))
            await asyncio.get_running_loop().run_in_executor(None, started.wait)
            borrowed = (await client.get("/tokens")).json()
            gate.set()
            return [r.json() for r in await work], borrowed

    with uvicorn_server(app) as (base, _):
        results, borrowed = asyncio.run(main(base))
    assert results == list(range(10))
    assert borrowed == 0


def test_options_are_checked_at_once() -> None:
    with pytest.raises(ValueError, match="backend"):
        lifespan(backend="gpu")
    with pytest.raises(ValueError, match="async_cancel"):
        lifespan(async_cancel="later")
    with pytest.raises(TypeError, match="shutdown_timeout"):
        lifespan(shutdown_timeout="soon")  # type: ignore[arg-type]
    # Accepted until now, these failed at start-up, or failed the shutdown itself
    # (mp.shutdown refused the timeout) and the worker processes outlived the server.
    for bad in (-1, float("nan"), -(10**400)):  # the int too large for a float raised OverflowError
        with pytest.raises(ValueError, match="shutdown_timeout"):
            lifespan(shutdown_timeout=bad)
    with pytest.raises(ValueError, match="num_threads"):
        lifespan(num_threads=0)
    with pytest.raises(TypeError, match="num_workers"):
        lifespan(num_workers="two")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_concurrent_tasks"):
        lifespan(max_concurrent_tasks=-3)
    lifespan(num_threads="auto", max_concurrent_tasks=0, shutdown_timeout=None)  # valid
    lifespan(shutdown_timeout=10**400)  # valid: no limit, as math.inf
    # Falsy, they skipped the check, and mp.set_max_concurrent_tasks refused them at start-up.
    for falsy in (False, 0.0):
        with pytest.raises(TypeError, match="max_concurrent_tasks"):
            lifespan(max_concurrent_tasks=falsy)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prestart"):
        lifespan(prestart="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cancel_pending"):  # taken as true, it cancelled what it was told not to
        lifespan(cancel_pending="false")  # type: ignore[arg-type]


async def _undecorated(app: Any) -> AsyncIterator[None]:
    yield


@contextlib.asynccontextmanager
async def _decorated(app: Any) -> AsyncIterator[None]:
    yield


def _generator(app: Any) -> Iterator[None]:
    yield


async def _not_yielding(app: Any) -> None:
    return None


class _UndecoratedCall:
    async def __call__(self, app: Any) -> AsyncIterator[None]:
        yield


_UNDECORATED_CALL = _UndecoratedCall()
_CALLED = _decorated(None)


_DECORATE = ": pass an async def that yields once (what it yields is the state), decorated with @contextlib.asynccontextmanager"


@pytest.mark.parametrize(
    ("app_lifespan", "said"),
    [
        (_undecorated, f"got an async generator function, {_undecorated!r}{_DECORATE}"),
        (functools.partial(_undecorated), f"got an async generator function, functools.partial({_undecorated!r}){_DECORATE}"),
        (_UNDECORATED_CALL, f"got an async generator function, {_UNDECORATED_CALL!r}{_DECORATE}"),
        (_generator, f"got a generator function, {_generator!r}{_DECORATE}"),
        (_not_yielding, f"got an async function, {_not_yielding!r}{_DECORATE}"),
        (_CALLED, f"got the context manager {_CALLED!r}: pass the function itself, not its call"),
        ("my_lifespan", "got 'my_lifespan'"),
    ],
    ids=["undecorated", "a partial of one", "an object whose __call__ is one", "a generator function", "an async def", "called", "a string"],
)
def test_an_app_lifespan_that_is_no_lifespan_function_is_refused_at_once(app_lifespan: Any, said: str) -> None:
    # Each failed only at start-up, with the pools configured, in words that named no argument.
    with pytest.raises(TypeError, match="app_lifespan must be a lifespan function") as refused:
        lifespan(app_lifespan=app_lifespan)
    assert said in str(refused.value)


class _OwnLifespan:
    """An async context manager that is its own lifespan function: calling it with the app returns it."""

    def __call__(self, app: Any) -> _OwnLifespan:
        return self

    async def __aenter__(self) -> dict[str, str]:
        return {"greeting": "hello"}

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def test_an_async_context_manager_that_takes_the_app_when_called_is_a_lifespan_function() -> None:
    # Refused as "the context manager a lifespan function returns", though Starlette's lifespan= takes it.
    async def state() -> Any:
        async with lifespan(app_lifespan=_OwnLifespan(), shutdown_timeout=10)(fastapi.FastAPI()) as state:
            return state

    assert asyncio.run(state()) == {"greeting": "hello"}


def test_a_missing_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "makeparallel.fastapi")
    with pytest.raises(ImportError, match=r'pip install "makeparallel\[fastapi\]"'):
        importlib.import_module("makeparallel.fastapi")


@pytest.mark.timeout(60)
def test_the_middleware_cancelled_by_the_server_returns_once_the_app_it_wraps_has_ended() -> None:
    # uvicorn cancels the requests still running after its graceful-shutdown
    # timeout, then runs the lifespan's shutdown at once. The middleware cancelled
    # the app's task without waiting for it: cleanup that awaits ran on after the
    # server had moved on to the shutdown (a task the route awaited was then ended
    # by mp.shutdown, not cancelled with its request).
    async def main() -> tuple[list[str], list[str]]:
        started = asyncio.Event()
        ended: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            started.set()
            try:
                await asyncio.Event().wait()  # awaits a task, say
            finally:
                await asyncio.sleep(0)  # cleanup that awaits
                ended.append("cleaned up")

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client stays
            raise AssertionError("unreachable")

        async def send(message: Any) -> None:
            pass

        served = asyncio.ensure_future(CancelOnDisconnect(app)({"type": "http"}, receive, send))
        at_return: list[str] = []
        served.add_done_callback(lambda _: at_return.extend(ended))
        await started.wait()
        served.cancel()
        with pytest.raises(asyncio.CancelledError):
            await served
        return at_return, ended

    at_return, ended = asyncio.run(main())
    assert at_return == ["cleaned up"] and ended == ["cleaned up"]


# For a script: whether a thread waits in a shutdown (in ``_wait_idle``) now.
SHUTDOWN_WAITS = """
def shutdown_waits():
    return any(
        frame.f_code.co_name == "_wait_idle"
        for top in sys._current_frames().values()
        for frame in iter_frames(top)
    )

def iter_frames(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back
"""


# A lifespan whose shutdown would wait for good for a stuck task, run as a
# script does under asyncio.run, and cut short ({stop}) once that wait began.
LIFESPAN_CUT_SHORT = """
import asyncio, os, signal, sys, threading
import makeparallel as mp
from fastapi import FastAPI
from makeparallel.fastapi import lifespan

never = threading.Event()

""" + SHUTDOWN_WAITS + """
@mp.parallel
def stuck():
    never.wait()

async def serve():
    async with lifespan(shutdown_timeout=None)(FastAPI()):
        stuck()

async def main():
    server = asyncio.ensure_future(serve())
    while not shutdown_waits():
        await asyncio.sleep(0.001)
    print("waiting", flush=True)
    {stop}

asyncio.run(main())
"""

# How the lifespan's shutdown is cut short: the script's step, its exit status, and how exit says it abandoned the task.
LIFESPAN_CUTS = {
    "Ctrl-C": (
        "os.kill(os.getpid(), signal.SIGINT); await server",
        -2,
        "after Ctrl-C ended the makeparallel.fastapi lifespan's shutdown;",
    ),
    "a cancel": (
        "server.cancel(); await asyncio.wait([server])",
        0,
        "while the makeparallel.fastapi lifespan's shutdown still waited for them;",
    ),
}


@pytest.mark.skipif(sys.platform == "win32", reason="exits by SIGINT (POSIX)")
@pytest.mark.parametrize("cut", LIFESPAN_CUTS)
def test_a_lifespan_cut_short_in_its_shutdown_lets_the_program_exit(cut: str) -> None:
    # The shutdown ran in the loop's default executor: the lifespan was cancelled
    # at once, but asyncio.run joined that executor's thread, and interpreter exit
    # joined it again after a second Ctrl-C, for the whole shutdown_timeout (here,
    # for good). The exit then abandons the stuck task, as after any shutdown().
    stop, returncode, abandoned = LIFESPAN_CUTS[cut]
    done = run_fresh_interpreter(LIFESPAN_CUT_SHORT.format(stop=stop))
    assert done.returncode == returncode, done.stderr
    assert done.stdout == "waiting\n"
    assert f"1 task(s) still unfinished at interpreter exit were abandoned {abandoned}" in done.stderr, done.stderr


# A real uvicorn server whose lifespan's shutdown waits ({timeout}) for a stuck
# task, and how the server stops ({stop}): a thread started with it stops it.
UVICORN_WITH_A_STUCK_TASK = """
import asyncio, contextlib, os, signal, sys, threading
import uvicorn
import makeparallel as mp
from fastapi import FastAPI
from makeparallel.fastapi import lifespan

mp.configure(exit_timeout=60)  # exit must not wait again after the lifespan's shutdown
never, running = threading.Event(), threading.Event()

@mp.parallel
def stuck():
    running.set()
    never.wait()

@contextlib.asynccontextmanager
async def start_a_stuck_task(app):
    stuck()
    while not running.is_set():  # started: cancel_pending cannot cancel it
        await asyncio.sleep(0.01)
    yield

""" + SHUTDOWN_WAITS + """
def press_ctrl_c_twice(on_this_thread=False):
    while not server.started:
        never.wait(0.01)
    os.kill(os.getpid(), signal.SIGINT)  # the server shuts down, and its lifespan waits
    while not shutdown_waits():
        never.wait(0.001)
    print("waiting", flush=True)
    if on_this_thread:  # as the kernel may deliver it: due, but no sleep of the main thread is cut short
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
    else:
        os.kill(os.getpid(), signal.SIGINT)

def stop_the_server():
    while not server.started:
        never.wait(0.01)
    print("stopping", flush=True)
    server.should_exit = True  # as on SIGTERM: the lifespan's shutdown then waits out its timeout

app = FastAPI(lifespan=lifespan(shutdown_timeout={timeout}, app_lifespan=start_a_stuck_task))
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning"))
threading.Thread(target={stop}, daemon=True).start()
server.run()
"""


def run_uvicorn_with_a_stuck_task(timeout: float | None, stop: str) -> subprocess.CompletedProcess[str]:
    """Run :data:`UVICORN_WITH_A_STUCK_TASK` in a fresh interpreter (60 s at most: one that waits for good fails)."""
    try:
        return run_fresh_interpreter(UVICORN_WITH_A_STUCK_TASK.format(timeout=timeout, stop=stop))
    except subprocess.TimeoutExpired:
        pytest.fail("the server still waited 60 s after it was stopped")


# How the lifespan's wait at a uvicorn server's stop ends: its shutdown_timeout, how
# the server stops, what it prints, its exit status, and what the warning must say.
LIFESPAN_WAIT_ENDS = {
    "its timeout passes": (
        0.2,
        "stop_the_server",
        "stopping\n",
        0,
        (
            "abandoned after the makeparallel.fastapi lifespan's shutdown waited 0.2 s; "
            "raise lifespan(shutdown_timeout=...) to wait for them"
        ),
    ),
    # uvicorn takes SIGINT for itself: a Ctrl-C as the lifespan waited reached
    # neither the lifespan nor the loop, and the server waited out the whole
    # shutdown_timeout (here, for good), however often the user pressed it. It
    # passes the Ctrl-C on once it has stopped.
    "a second Ctrl-C": (
        None,
        "press_ctrl_c_twice",
        "waiting\n",
        -signal.SIGINT,
        (
            "abandoned after Ctrl-C ended the makeparallel.fastapi lifespan's shutdown; "
            "a task stops sooner when it calls makeparallel.check_cancelled()"
        ),
    ),
    # A Ctrl-C that lands on another thread (or just before the loop sleeps) wakes
    # no sleep: the loop, with nothing else to do, slept for good, and its handler
    # never ran. One run in thirty, under load.
    "a second Ctrl-C on another thread": (
        None,
        "lambda: press_ctrl_c_twice(on_this_thread=True)",
        "waiting\n",
        -signal.SIGINT,
        (
            "abandoned after Ctrl-C ended the makeparallel.fastapi lifespan's shutdown; "
            "a task stops sooner when it calls makeparallel.check_cancelled()"
        ),
    ),
}


@pytest.mark.skipif(sys.platform == "win32", reason="Ctrl-C by SIGINT (POSIX)")
@pytest.mark.parametrize("end", LIFESPAN_WAIT_ENDS)
def test_the_lifespans_wait_under_uvicorn_ends_and_exit_says_how_naming_its_setting(end: str) -> None:
    # The library's exit hook said "abandoned after makeparallel.shutdown(); give
    # shutdown() a longer timeout_secs", a call and an argument the program never
    # made: the timeout is lifespan(shutdown_timeout=...), and after a Ctrl-C no
    # longer timeout would have helped.
    timeout, stop, printed, returncode, says = LIFESPAN_WAIT_ENDS[end]
    done = run_uvicorn_with_a_stuck_task(timeout, stop)
    assert done.stdout == printed, done.stderr
    assert done.returncode == returncode, done.stderr
    assert f"1 task(s) still unfinished at interpreter exit were {says}" in done.stderr, done.stderr
    assert "timeout_secs" not in done.stderr and "makeparallel.shutdown()" not in done.stderr, done.stderr


@pytest.mark.timeout(60)
def test_a_shutdown_that_fails_after_its_lifespan_was_cancelled_leaves_no_unretrieved_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The wait in slices left its future pending when the lifespan was
    # cancelled; the shutdown's error, set on it later, was logged as "Future
    # exception was never retrieved" (a plain await of it cancelled it).
    from makeparallel import _runtime

    fail = threading.Event()

    def failing_run(self: Any, timeout_secs: Any, cancel_pending: Any) -> bool:
        fail.wait(30)
        raise ValueError("the shutdown failed")

    monkeypatch.setattr(_runtime.ShutdownCall, "run", failing_run)

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        reported: list[Any] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        running = lifespan(shutdown_timeout=5)(None)
        await running.__aenter__()
        before = set(threading.enumerate())  # (another test's shutdown thread may still end)
        ending = asyncio.ensure_future(running.__aexit__(None, None, None))
        await asyncio.sleep(0)  # its shutdown wait began
        ending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ending
        (stopping,) = [
            t for t in set(threading.enumerate()) - before if t.name == "makeparallel-lifespan-shutdown"
        ]
        fail.set()
        await loop.run_in_executor(None, stopping.join, 30)  # it handed its error to the loop
        await asyncio.sleep(0)  # which takes it
        del ending, running
        gc.collect()
        return reported

    assert asyncio.run(main()) == []
