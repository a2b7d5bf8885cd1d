"""Real servers on 127.0.0.1 for the web integration tests: uvicorn (ASGI) and werkzeug (WSGI)."""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from pool_helpers import wait_until


def run_fresh_interpreter(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a fresh interpreter that imports this checkout; its output, once it exits.

    Without coverage's variables: a child that starts measuring slows down and
    writes files the suite's run does not combine.

    Raises:
        subprocess.TimeoutExpired: it ran past ``timeout`` seconds (one that waits for good).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    command = [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, env=env)


def free_socket() -> socket.socket:
    """A listening-ready TCP socket bound to a free port of 127.0.0.1.

    Made with ``IPPROTO_TCP``: asyncio sets ``TCP_NODELAY`` only on connections
    accepted from a socket that says it is TCP; without it, every response
    waits about 40 ms for the client's delayed ACK (Nagle's algorithm).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def uvicorn_server(app: Any, graceful: float = 2.0) -> Iterator[Any]:
    """Serve ``app`` with uvicorn on a free port in a thread; yield (base URL, server).

    On exit the server stops (as on SIGTERM: in-flight requests get ``graceful``
    seconds, then are cancelled) and its thread is joined, with the AnyIO worker
    threads its sync routes and background tasks ran on: the server's loop tells
    them to stop as it ends but does not wait for them.
    """
    import uvicorn

    before = set(threading.enumerate())
    sock = free_socket()
    config = uvicorn.Config(app, lifespan="on", log_level="warning", timeout_graceful_shutdown=graceful)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn")
    thread.start()
    try:
        assert wait_until(lambda: server.started or not thread.is_alive(), 30), "uvicorn never started"
        assert server.started, "uvicorn failed to start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"
        workers = [t for t in threading.enumerate() if t not in before and t.name == "AnyIO worker thread"]
        for worker in workers:
            worker.join(30)
        assert not any(t.is_alive() for t in workers), "the server's AnyIO worker threads did not stop"


@contextmanager
def werkzeug_server(app: Any) -> Iterator[str]:
    """Serve the WSGI ``app`` with werkzeug's threaded server on a free port; yield its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-werkzeug")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(30)
        server.server_close()


TESTS = Path(__file__).resolve().parent


@contextmanager
def broken_pool_server(framework: str, fault: str) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    """Serve ``broken_pool_server.py`` in a child interpreter; yield its base URL and a breaker.

    Calling the breaker kills one of the child's pool threads (``fault``:
    ``"thread"``, a worker thread; ``"process"``, the process pool's loop thread)
    and returns the child's report. The child's exit status and output are
    checked when the block ends.
    """
    path = os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])
    child = subprocess.Popen(
        [sys.executable, str(TESTS / "broken_pool_server.py"), framework, fault],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None

    def break_the_pool() -> dict[str, Any]:
        child.stdin.write("break\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        return json.loads(child.stdout.readline())  # type: ignore[union-attr, no-any-return]

    try:
        started = child.stdout.readline()
        assert started, f"the server did not start: {child.stderr.read()}"
        yield json.loads(started)["base"], break_the_pool
    finally:
        child.stdin.close()
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        errors = child.stderr.read()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == 0, errors


def check_live_fails_for_good(framework: str, fault: str) -> dict[str, Any]:
    """Kill a pool thread of an app served by ``framework``; check the health routes answer 503 for good.

    ``fault`` as for :func:`broken_pool_server`. Returns the child's report.
    """
    with broken_pool_server(framework, fault) as (base, break_the_pool):
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/health/live").status_code == 200
            report = break_the_pool()
            assert report["not_live"], report
            live = client.get("/health/live")
            assert live.status_code == 503, live.text
            body = live.json()
            assert body["live"] is False and body["status"] == "unhealthy"
            assert any("died of an error" in reason for reason in body["reasons"]), body["reasons"]
            assert client.get("/health/ready").status_code == 503  # unhealthy is not ready either
            assert client.get("/health/live").status_code == 503  # for good: it does not heal
    return report


@contextmanager
def shutdown_begun_after_the_look(monkeypatch: Any, shut_down: Callable[[], object]) -> Iterator[list[str]]:
    """Run ``shut_down`` on a thread of its own, stopping the workers, right after this thread first looks for one that does.

    Once this thread has looked through the shutdowns that stop the worker
    processes (``_runtime._stopping_workers``) and found none, at its next call
    (not a generator's): if it still holds the runtime's lock there, its look
    and what follows are one hold, which no shutdown can come between, and
    nothing is started ("held"); else ("free") ``shut_down`` runs and is held
    as it stops the workers (``terminate_all``) until the block ends. Yields
    the list of what was found. The trace set before is restored.
    """
    from makeparallel import _runtime

    me = threading.get_ident()
    looked, found = [False], []
    stopping, go = threading.Event(), threading.Event()
    terminate_all = _runtime.terminate_all

    class Looked(list):  # type: ignore[type-arg]
        def __iter__(self) -> Iterator[Any]:
            if threading.get_ident() == me:
                looked[0] = True
            return super().__iter__()

    def held_terminate_all(*args: Any) -> None:
        stopping.set()
        assert go.wait(30), "the test never let the shutdown go on"
        terminate_all(*args)

    def at_each_call(frame: Any, event: str, arg: object) -> None:
        if event != "call" or not looked[0] or found or frame.f_code.co_flags & inspect.CO_GENERATOR:
            return
        if _runtime._lock.locked():
            found.append("held")
            return
        found.append("free")
        threading.Thread(target=shut_down, name="shutting-down", daemon=True).start()
        assert stopping.wait(30), "the shutdown never began stopping the workers"

    monkeypatch.setattr(_runtime, "_stopping_workers", Looked())
    monkeypatch.setattr(_runtime, "terminate_all", held_terminate_all)
    tracing = sys.gettrace()
    sys.settrace(at_each_call)
    try:
        yield found
    finally:
        sys.settrace(tracing)
        go.set()
        shutting_down = [thread for thread in threading.enumerate() if thread.name == "shutting-down"]
        for thread in shutting_down:
            thread.join(30)


class WrappedRegistry:
    """A Prometheus registry of another kind: not a ``CollectorRegistry``, with its ``register()`` and ``collect()``."""

    def __init__(self) -> None:
        import prometheus_client

        self.inner = prometheus_client.CollectorRegistry()

    def register(self, collector: Any) -> None:
        self.inner.register(collector)

    def collect(self) -> Iterable[Any]:
        return self.inner.collect()
