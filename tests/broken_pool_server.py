"""A web app served on 127.0.0.1 in a child interpreter, whose pool the test can break.

``python broken_pool_server.py FRAMEWORK FAULT`` (FRAMEWORK ``fastapi`` on uvicorn,
or ``flask`` on werkzeug; FAULT ``thread`` or ``process``) serves the app with the
library's health routes and prints ``{"base": URL}``. Each line read on stdin then
breaks the pool once, through a fault in the pool itself: a worker thread, or
the process pool's loop thread, dies of an error, as a bug of the library would
make it die. It prints what happened, and, for Flask, what the test client
answers. End of input stops the server.

A dead pool thread makes the process not live for good, so this runs in an
interpreter of its own rather than in the test's.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import makeparallel as mp
from makeparallel._backends._process import ProcessBackend
from makeparallel._backends._thread import ThreadBackend
from pool_helpers import wait_until
from web_helpers import uvicorn_server, werkzeug_server

_armed: list[str] = []


def _arm(method: str, cls: Any) -> None:
    """Make ``cls.method`` raise once ``_armed`` holds a request; a fault in the pool itself."""
    original = getattr(cls, method)

    def failing(*args: Any) -> Any:
        if _armed:
            _armed.pop()
            raise SystemExit("injected fault in the pool itself")
        return original(*args)

    setattr(cls, method, failing)


def break_the_pool(fault: str) -> dict[str, Any]:
    """Kill a worker thread, or the process loop thread, with one task; report how the task ended."""
    _armed.append(fault)
    task = mp.parallel(backend=fault)(abs)(-3)
    try:
        outcome: Any = task.get(60)  # with a timeout: never run inline, always by the pool
    except mp.WorkerCrashedError as error:
        outcome = str(error)
    live = wait_until(lambda: not mp.health(memory_limit_percent=100.0)["live"], 30)
    return {"task": outcome, "not_live": live}


def fastapi_app() -> Any:
    from fastapi import FastAPI

    from makeparallel.fastapi import lifespan, router

    app = FastAPI(lifespan=lifespan(shutdown_timeout=10))
    app.include_router(router())
    return app


def flask_app() -> Any:
    from flask import Flask

    from makeparallel.flask import MakeParallel

    app = Flask(__name__)
    MakeParallel(app)
    return app


def main(framework: str, fault: str) -> None:
    logging.basicConfig(level=logging.CRITICAL, format="%(levelname)s %(message)s")
    _arm("_next_locked" if fault == "thread" else "_receive_all", ThreadBackend if fault == "thread" else ProcessBackend)
    mp.configure_thread_pool(1)
    mp.configure_process_pool(1)
    app = fastapi_app() if framework == "fastapi" else flask_app()
    served = uvicorn_server(app) if framework == "fastapi" else werkzeug_server(app)
    with served as where:
        base = where[0] if framework == "fastapi" else where
        print(json.dumps({"base": base}), flush=True)
        for _ in sys.stdin:
            report = break_the_pool(fault)
            if framework == "flask":
                client = app.test_client()
                report["test_client"] = {
                    probe: client.get(f"/health/{probe}").status_code for probe in ("live", "ready")
                }
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
