"""Real servers on 127.0.0.1 for the web integration tests: uvicorn (ASGI) and werkzeug (WSGI)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pool_helpers import wait_until


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
    seconds, then are cancelled) and its thread is joined.
    """
    import uvicorn

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
