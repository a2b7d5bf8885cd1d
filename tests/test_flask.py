"""makeparallel.flask on a real werkzeug threaded server on 127.0.0.1, and with Flask's test client."""

from __future__ import annotations

import atexit
import json
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

import makeparallel as mp
from makeparallel import _runtime
from pool_helpers import EXIT_WAITS, process_alive, wait_until
from web_helpers import (
    WrappedRegistry,
    check_live_fails_for_good,
    run_fresh_interpreter,
    shutdown_begun_after_the_look,
    werkzeug_server,
)
from web_tasks import count_primes

flask = pytest.importorskip("flask")
from makeparallel.flask import MakeParallel  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def make_app(**config: Any) -> Any:
    app = flask.Flask(__name__)
    app.config.update(config)
    return app


def test_concurrent_clients_on_a_threaded_werkzeug_server() -> None:
    app = make_app(MAKEPARALLEL_NUM_WORKERS=2, MAKEPARALLEL_NUM_THREADS=4)
    MakeParallel(app)

    @app.get("/primes/<int:limit>")
    def primes(limit: int) -> Any:
        return {"primes": count_primes(limit).get(timeout=60)}

    expected = count_primes.__wrapped__(3000)
    with werkzeug_server(app) as base:
        with httpx.Client(base_url=base, timeout=60) as client, ThreadPoolExecutor(16) as clients:
            answers = list(clients.map(lambda _: client.get("/primes/3000"), range(64)))
            assert client.get("/health/ready").status_code == 200  # one request did not shut anything down
    assert {a.status_code for a in answers} == {200}
    assert [a.json()["primes"] for a in answers] == [expected] * 64
    assert mp.get_process_pool_info()["num_workers"] == 2
    assert mp.get_thread_pool_info()["num_threads"] == 4


def test_extension_conventions_and_the_test_client(gate: threading.Event) -> None:
    extension = MakeParallel()  # the factory pattern: init_app later
    app = make_app(MAKEPARALLEL_URL_PREFIX="/ops", MAKEPARALLEL_SHUTDOWN_TIMEOUT=7)
    extension.init_app(app)
    assert app.extensions["makeparallel"] is extension
    assert app.config["MAKEPARALLEL_CANCEL_PENDING"] is True  # defaults filled in
    client = app.test_client()

    assert client.get("/ops/health/live").status_code == 200
    ready = client.get("/ops/health/ready")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ok"

    mp.set_max_concurrent_tasks(1)  # at the limit: degraded, still ready
    held = mp.parallel(lambda: gate.wait(30))()
    ready = client.get("/ops/health/ready")
    assert ready.status_code == 200 and ready.get_json()["status"] == "degraded"
    gate.set()
    held.get(30)
    mp.set_max_concurrent_tasks(None)

    mp.shutdown(timeout_secs=10)
    ready = client.get("/ops/health/ready")
    assert ready.status_code == 503 and ready.get_json()["status"] == "unhealthy"
    assert client.get("/ops/health/live").status_code == 200
    mp.reset_shutdown()

    page = client.get("/ops/metrics")
    assert page.status_code == 200 and page.content_type.startswith("text/plain")
    assert "makeparallel_tasks_total" in page.get_data(as_text=True)


def test_a_registry_of_another_kind_is_served() -> None:
    # Read by its register() and collect(), not by its class: a check of the class would refuse a
    # registry that the extension served before any check, and start_http_server() serves.
    app = make_app()
    MakeParallel(app, registry=WrappedRegistry())
    page = app.test_client().get("/metrics")
    assert page.status_code == 200 and "makeparallel_tasks_total" in page.get_data(as_text=True)


def test_an_app_set_up_after_a_shutdown_takes_tasks_again() -> None:
    # An app factory called again once the extension shut down (a test suite's
    # fixture does so for each test) made an app whose every task failed with
    # ShutdownError, and whose /health/ready answered 503 for good; the FastAPI
    # lifespan reopens the library as its server starts.
    extension = MakeParallel()

    def create_app() -> Any:
        app = make_app()
        extension.init_app(app)

        @app.get("/double/<int:n>")
        def double(n: int) -> Any:
            return {"double": mp.parallel(lambda: 2 * n)().get(timeout=30)}

        return app

    for _ in range(2):
        client = create_app().test_client()
        assert client.get("/health/ready").status_code == 200
        assert client.get("/double/21").get_json() == {"double": 42}
        assert extension.shutdown()
        assert client.get("/health/ready").status_code == 503


@pytest.mark.parametrize("fault", ["thread", "process"])
def test_health_live_answers_503_once_a_pool_thread_died(fault: str) -> None:
    """On a real werkzeug server and with the test client, in an interpreter whose pool thread died."""
    report = check_live_fails_for_good("flask", fault)
    assert report["test_client"] == {"live": 503, "ready": 503}


def test_routes_can_be_left_out_and_settings_are_checked() -> None:
    app = make_app(MAKEPARALLEL_ROUTES=False)
    MakeParallel(app)
    assert app.test_client().get("/health/live").status_code == 404
    with pytest.raises(ValueError, match=r"MAKEPARALLEL_BACKEND.*backend must be one of"):
        MakeParallel(make_app(MAKEPARALLEL_BACKEND="gpu"))
    with pytest.raises(ValueError, match="MAKEPARALLEL_SHUTDOWN_TIMEOUT must be a number"):
        MakeParallel(make_app(MAKEPARALLEL_SHUTDOWN_TIMEOUT=-1))
    with pytest.raises(TypeError, match=r"MAKEPARALLEL_NUM_THREADS.*num_threads"):
        MakeParallel(make_app(MAKEPARALLEL_NUM_THREADS="four"))
    # Accepted until now: NaN failed the shutdown at exit, and the string "false"
    # (a setting read from the environment) counted as True.
    with pytest.raises(ValueError, match="MAKEPARALLEL_SHUTDOWN_TIMEOUT must be a number"):
        MakeParallel(make_app(MAKEPARALLEL_SHUTDOWN_TIMEOUT=float("nan")))
    with pytest.raises(TypeError, match="MAKEPARALLEL_CANCEL_PENDING must be True or False"):
        MakeParallel(make_app(MAKEPARALLEL_CANCEL_PENDING="false"))
    with pytest.raises(TypeError, match="MAKEPARALLEL_ROUTES must be True or False"):
        MakeParallel(make_app(MAKEPARALLEL_ROUTES="false"))


@pytest.mark.parametrize("second", ["the same extension", "another extension"])
def test_an_app_set_up_twice_is_refused_and_nothing_is_applied(second: str) -> None:
    """It failed with Flask's own blueprint message ("Use 'name=' ..."), which init_app has no
    such argument for, after applying the pool settings and the shutdown options again."""
    before = mp.get_thread_pool_info()["num_threads"]
    app = make_app(MAKEPARALLEL_SHUTDOWN_TIMEOUT=7)
    extension = MakeParallel(app)
    app.config.update(MAKEPARALLEL_NUM_THREADS=before + 1, MAKEPARALLEL_SHUTDOWN_TIMEOUT=1)
    again = extension if second == "the same extension" else MakeParallel()
    with pytest.raises(RuntimeError, match=r"^makeparallel is already set up on Flask app 'test_flask'"):
        again.init_app(app)
    assert app.extensions["makeparallel"] is extension
    assert extension._shutdown_timeout == 7
    assert mp.get_thread_pool_info()["num_threads"] == before


@pytest.mark.parametrize(
    "failure",
    ["a registry with another collector", "no registry", "an app that served a request", "a blueprint of its name"],
)
def test_a_set_up_that_failed_applies_nothing_and_may_be_tried_again(failure: str) -> None:
    """The extension was recorded before its blueprint was made and registered: where either
    failed, the pools were resized, and a second try, the cause fixed, was refused as a
    second set-up of an app that served no route of the library's."""
    prometheus_client = pytest.importorskip("prometheus_client")
    before = mp.get_thread_pool_info()["num_threads"]
    app = make_app(MAKEPARALLEL_NUM_THREADS=before + 1)
    registry = None
    if failure == "a registry with another collector":
        registry = prometheus_client.CollectorRegistry()
        prometheus_client.Gauge("makeparallel_tasks_running", "not the library's", registry=registry)
        raised: Any = (ValueError, "the registry has another collector of makeparallel's metric names")
    elif failure == "no registry":  # the module, not its CollectorRegistry
        registry = prometheus_client.registry
        raised = (TypeError, r"registry must be a prometheus_client registry .*or None for one of its own.*, got <module")
    elif failure == "an app that served a request":
        app.add_url_rule("/", "index", lambda: "hello")
        assert app.test_client().get("/").status_code == 200
        raised = (AssertionError, "register_blueprint")
    else:
        app.register_blueprint(flask.Blueprint("makeparallel", __name__))
        raised = (ValueError, "'makeparallel' is already registered")
    with pytest.raises(raised[0], match=raised[1]):
        MakeParallel(app, registry=registry)
    assert "makeparallel" not in app.extensions
    assert mp.get_thread_pool_info()["num_threads"] == before
    if failure in ("a registry with another collector", "no registry"):
        extension = MakeParallel(app)  # a registry of its own
        assert app.test_client().get("/metrics").status_code == 200
    else:
        app.config["MAKEPARALLEL_ROUTES"] = False
        extension = MakeParallel(app)
    assert app.extensions["makeparallel"] is extension
    assert mp.get_thread_pool_info()["num_threads"] == before + 1


@pytest.mark.parametrize("backend", ["dask", "interpreter"])
def test_a_backend_that_cannot_run_here_is_named_as_a_setting(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Refused at the setting since configure() refuses them where named (ImportError where
    # distributed is missing, RuntimeError before 3.14): the error escaped the check of the
    # settings as it was, naming no key, a kind of error MakeParallel() did not document.
    if backend == "interpreter" and sys.version_info >= (3, 14):
        pytest.skip("the interpreter pool runs here")
    monkeypatch.setitem(sys.modules, "distributed", None)  # an import of it fails, as where it is not installed
    error, message = {
        "dask": (ImportError, r'pip install "makeparallel\[dask\]"'),
        "interpreter": (RuntimeError, "needs Python 3.14"),
    }[backend]
    before = mp.get_thread_pool_info()["num_threads"]
    app = make_app(MAKEPARALLEL_BACKEND=backend, MAKEPARALLEL_NUM_THREADS=before + 1)
    with pytest.raises(error, match=rf"^invalid MAKEPARALLEL_BACKEND in app.config: .*{message}"):
        MakeParallel(app)
    assert mp.get_thread_pool_info()["num_threads"] == before
    assert "makeparallel" not in app.extensions


@pytest.mark.parametrize(
    ("key", "value", "error", "message"),
    [
        ("MAKEPARALLEL_BACKEND", "gpu", ValueError, "backend must be one of"),
        ("MAKEPARALLEL_NUM_THREADS", "four", TypeError, "num_threads must be an int"),
        ("MAKEPARALLEL_NUM_THREADS", 0, ValueError, "num_threads must be an int >= 1"),
        ("MAKEPARALLEL_NUM_WORKERS", 2.5, TypeError, "num_workers must be an int"),
        # It said "limit must be an int >= 1": no setting of that name.
        ("MAKEPARALLEL_MAX_CONCURRENT_TASKS", -3, ValueError, "limit must be an int >= 1, or None or 0 for none, got -3"),
        ("MAKEPARALLEL_SHUTDOWN_TIMEOUT", "30", ValueError, "a number of seconds >= 0 or None, got '30'"),
        ("MAKEPARALLEL_URL_PREFIX", "ops", ValueError, "a path that starts with \"/\""),
    ],
)
def test_a_bad_setting_is_named_and_nothing_is_applied(key: str, value: Any, error: type, message: str) -> None:
    """The error names the key; a bad setting read after good ones left those applied (the pool resized)."""
    before = mp.get_thread_pool_info()["num_threads"]
    app = make_app(MAKEPARALLEL_BACKEND="sync", MAKEPARALLEL_NUM_THREADS=before + 1, MAKEPARALLEL_NUM_WORKERS=1)
    app.config[key] = value
    with pytest.raises(error, match=rf"{key}.*{message}"):
        MakeParallel(app)
    assert mp.get_thread_pool_info()["num_threads"] == before
    assert mp.parallel(threading.get_ident)().get(10) != threading.get_ident()  # the backend is still the pool's
    assert "makeparallel" not in app.extensions


@pytest.mark.parametrize("zero", [0, "numpy"])
def test_a_limit_of_0_removes_the_limit_as_set_max_concurrent_tasks_does(zero: Any) -> None:
    """0 means "no limit": it was checked, then taken for a limit not given, and one set earlier stayed."""
    if zero == "numpy":
        zero = pytest.importorskip("numpy").int64(0)
    mp.set_max_concurrent_tasks(3)  # the fixture removes it
    extension = MakeParallel(make_app(MAKEPARALLEL_MAX_CONCURRENT_TASKS=zero))
    atexit.unregister(extension._at_exit)
    assert _runtime.global_limiter.limit is None


def test_numpy_numbers_are_settings_too() -> None:
    numpy = pytest.importorskip("numpy")
    MakeParallel(make_app(MAKEPARALLEL_SHUTDOWN_TIMEOUT=numpy.float32(7), MAKEPARALLEL_NUM_THREADS=numpy.int64(3)))
    assert mp.get_thread_pool_info()["num_threads"] == 3
    with pytest.raises(ValueError, match="MAKEPARALLEL_SHUTDOWN_TIMEOUT must be a number"):
        MakeParallel(make_app(MAKEPARALLEL_SHUTDOWN_TIMEOUT=numpy.float32("nan")))


@pytest.mark.timeout(30)
def test_an_app_set_up_while_a_shutdown_runs_in_another_thread_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # init_app reopened the library at once, as the shutdown went on stopping
    # the worker processes: the new app's first process tasks failed with
    # ShutdownError, the library not shut down. It now waits for that shutdown
    # to end, as the FastAPI lifespan waits for the one before it.
    first = MakeParallel(make_app(MAKEPARALLEL_NUM_WORKERS=1))
    assert mp.parallel(backend="process")(abs)(-1).get(timeout=30) == 1  # a worker runs
    stopping, go, terminated, settled = (threading.Event() for _ in range(4))
    terminate_all, reset_once_none_stops = _runtime.terminate_all, _runtime.reset_shutdown_once_none_stops

    def held_terminate_all(*args: Any) -> None:
        stopping.set()
        assert go.wait(30), "the test never let the shutdown go on"
        terminate_all(*args)
        terminated.set()

    def announced_wait() -> None:
        settled.set()  # it waits now (or once this returns)
        reset_once_none_stops()

    monkeypatch.setattr(_runtime, "terminate_all", held_terminate_all)
    monkeypatch.setattr(_runtime, "reset_shutdown_once_none_stops", announced_wait)
    seen: dict[str, Any] = {}

    def set_up_second_app() -> None:
        try:
            MakeParallel(make_app(MAKEPARALLEL_NUM_WORKERS=1))
            seen["shutdown over"] = terminated.is_set()
            seen["result"] = mp.parallel(backend="process")(abs)(-2).get(timeout=30)
        except Exception as error:  # noqa: BLE001  # checked below, in the test's thread
            seen["result"] = error
        finally:
            settled.set()

    with ThreadPoolExecutor(2) as threads:
        shutting_down = threads.submit(first.shutdown)
        assert stopping.wait(30), "the shutdown never began stopping the workers"
        setting_up = threads.submit(set_up_second_app)
        assert settled.wait(30)
        go.set()
        assert shutting_down.result(30) is True
        setting_up.result(30)
    assert seen == {"shutdown over": True, "result": 2}
    assert not _runtime.is_shut_down()


@pytest.mark.timeout(60)
def test_an_app_set_up_as_a_shutdown_begins_stopping_the_workers_is_not_reset_under_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # init_app looked for a shutdown stopping the worker processes, under the
    # runtime's lock, then reset the library in a second hold of it: a shutdown
    # that began stopping them in between was reset under, the app's process
    # tasks failing with ShutdownError as it went on. The look and the reset are
    # now one hold, which no shutdown comes between.
    first = MakeParallel(make_app())
    with shutdown_begun_after_the_look(monkeypatch, first.shutdown) as found:
        MakeParallel(make_app())
        reset_under_a_shutdown = _runtime.shutdown_runs()
    assert (found, reset_under_a_shutdown) == (["held"], False)
    assert not _runtime.is_shut_down()
    assert mp.parallel(abs)(-1).get(timeout=30) == 1


@pytest.mark.timeout(60)
def test_an_app_set_up_by_a_task_a_shutdown_waits_for_does_not_hold_that_shutdown() -> None:
    # A background task that builds its app for an app context (create_app())
    # as the program shut down in another thread: init_app waited for that
    # shutdown to end, which waited for the task: for good with a timeout of
    # None, here for its whole timeout. Only a shutdown stopping the workers is
    # waited for; one still waiting for its tasks stops none once reopened.
    MakeParallel(make_app())
    running = threading.Event()

    @mp.parallel(backend="thread")
    def builds_its_app() -> str:
        running.set()
        assert wait_until(_runtime.is_shut_down, 30), "the shutdown never began"
        MakeParallel(make_app())
        return "built"

    handle = builds_its_app()
    assert running.wait(30)
    assert mp.shutdown(timeout_secs=30) is True  # the task ended within its wait
    assert handle.result() == "built"
    assert not _runtime.is_shut_down()  # the task's app reopened the library


@pytest.mark.timeout(60)
def test_an_app_set_up_by_a_signal_handler_as_its_thread_stops_the_workers_does_not_wait_for_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The handler (a SIGHUP that rebuilds the app) runs in the thread whose
    # shutdown is stopping the workers: init_app waited for that shutdown to
    # end, which could not go on before the handler returned. For good.
    MakeParallel(make_app(MAKEPARALLEL_NUM_WORKERS=1))
    assert mp.parallel(backend="process")(abs)(-1).get(timeout=30) == 1  # a worker to stop
    set_up = threading.Event()
    terminate_all = _runtime.terminate_all

    def signalled_terminate_all(*args: Any) -> None:
        signal.raise_signal(signal.SIGUSR1)  # handled in this thread, before the next line
        terminate_all(*args)

    def rebuild_the_app(signum: int, frame: Any) -> None:
        MakeParallel(make_app())
        set_up.set()

    monkeypatch.setattr(_runtime, "terminate_all", signalled_terminate_all)
    previous = signal.signal(signal.SIGUSR1, rebuild_the_app)
    try:
        assert mp.shutdown(timeout_secs=10) is True
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert set_up.is_set()
    assert not _runtime.is_shut_down()  # reopened by the handler's app
    assert mp.parallel(backend="process")(abs)(-2).get(timeout=30) == 2


def test_a_shutdown_timeout_too_large_for_a_float_waits_without_limit() -> None:
    # Accepted by the setting's check, it failed the shutdown with OverflowError.
    extension = MakeParallel(make_app(MAKEPARALLEL_SHUTDOWN_TIMEOUT=10**400))
    try:
        assert extension.shutdown() is True  # the fixture accepts tasks again after it
    finally:
        atexit.unregister(extension._at_exit)


_EXIT_SCRIPT = """
import json, sys, time
import makeparallel as mp
from flask import Flask
from makeparallel.flask import MakeParallel

app = Flask(__name__)
app.config.update(MAKEPARALLEL_BACKEND="process", MAKEPARALLEL_NUM_WORKERS=2, MAKEPARALLEL_SHUTDOWN_TIMEOUT=1)
MakeParallel(app)

@app.get("/sleep")
def sleep():
    mp.parallel(time.sleep)(120)  # still running at exit
    return "started"

client = app.test_client()
assert mp.parallel(abs)(-1).get(60) == 1  # both workers are up
for _ in range(3):
    assert client.get("/sleep").get_data(as_text=True) == "started"  # no shutdown per request
print(json.dumps(mp.get_process_pool_info()["worker_pids"]), flush=True)
"""


@pytest.mark.timeout(150)  # a fresh interpreter with a process pool, given 90 s on a loaded machine
def test_the_pools_shut_down_at_interpreter_exit_not_per_request() -> None:
    done = run_fresh_interpreter(_EXIT_SCRIPT, timeout=90)
    assert done.returncode == 0, done.stderr
    workers = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(workers) == 2

    def gone() -> bool:
        return not any(process_alive(pid) for pid in workers)

    assert wait_until(gone, 30), "a worker process outlived the app"


# A stuck task, and an app whose exit would wait for it for good.
STUCK_AT_EXIT = """
import threading
import makeparallel as mp
from flask import Flask
from makeparallel.flask import MakeParallel

def create_app(timeout):
    app = Flask(__name__)
    app.config["MAKEPARALLEL_SHUTDOWN_TIMEOUT"] = timeout
    MakeParallel(app)
    return app

first = create_app(None)
never = threading.Event()

@mp.parallel
def stuck():
    never.wait()

handle = stuck()
print("submitted", flush=True)
"""

# What shuts the library down before the first app's hook runs, and who exit then says gave up on the task.
SHUT_DOWN_FIRST = {
    "an app set up last": (
        "last = create_app(0.2)  # its exit hook runs first, and gives up after 0.2 s\n",
        "the makeparallel.flask extension's shutdown",
    ),
    "the program": ("mp.shutdown(timeout_secs=0.2)\n", "makeparallel.shutdown()"),
    "an app set up last by an earlier extension": (
        (
            "create_app(None)  # another extension, set up after the first one\n"
            "last = Flask('last')\n"
            "last.config['MAKEPARALLEL_SHUTDOWN_TIMEOUT'] = 0.2\n"
            "first.extensions['makeparallel'].init_app(last)  # the first extension sets up the last app\n"
        ),
        "the makeparallel.flask extension's shutdown",
    ),
}


@pytest.mark.parametrize("first", SHUT_DOWN_FIRST)
def test_the_exit_does_not_wait_again_once_the_library_is_shut_down(first: str) -> None:
    # Each extension's exit hook shut down in turn: with an app factory, the
    # exit waited each app's timeout for a stuck task, one after the other
    # (an hour for a test suite that makes a hundred apps), and after the
    # program's own shutdown() it waited again; here, for good.
    shut_down_first, by = SHUT_DOWN_FIRST[first]
    done = run_fresh_interpreter(STUCK_AT_EXIT + shut_down_first)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "submitted\n"
    assert f"1 task(s) still unfinished at interpreter exit were abandoned after {by} waited 0.2 s;" in done.stderr


# A task that sends the user's Ctrl-C once the main thread waits at exit for it.
INTERRUPT_THE_EXIT_WAIT = """
import os, signal, sys

""" + EXIT_WAITS + """
@mp.parallel
def interrupt_the_exit_wait():
    while not exit_waits():
        never.wait(0.001)
    os.kill(os.getpid(), signal.SIGINT)
    never.wait()

interrupting = interrupt_the_exit_wait()
"""

# How a Ctrl-C comes: the rest of the script, the exit status, and how exit says it abandoned the tasks.
CTRL_C_AT_EXIT = {
    "ending the program": ("raise KeyboardInterrupt  # uncaught\n", -signal.SIGINT, "after Ctrl-C"),
    "as the exit waits": (INTERRUPT_THE_EXIT_WAIT, 0, "after Ctrl-C ended the makeparallel.flask extension's shutdown;"),
}


@pytest.mark.skipif(sys.platform == "win32", reason="exits by SIGINT (POSIX)")
@pytest.mark.parametrize("ctrl_c", CTRL_C_AT_EXIT)
def test_a_ctrl_c_ends_the_exit_at_once_without_a_traceback_of_its_own(ctrl_c: str) -> None:
    # The extension's exit hook waited its timeout (here, for good) even when an
    # uncaught Ctrl-C ended the program, where the library's own hook does not
    # wait; and a Ctrl-C during its wait printed "Exception ignored in atexit
    # callback" with a KeyboardInterrupt traceback, which the library's own hook
    # never prints.
    rest, returncode, abandoned = CTRL_C_AT_EXIT[ctrl_c]
    done = run_fresh_interpreter(STUCK_AT_EXIT + rest)
    assert done.returncode == returncode, done.stderr
    assert done.stdout == "submitted\n"
    assert f"still unfinished at interpreter exit were abandoned {abandoned}" in done.stderr
    if returncode == 0:  # an uncaught KeyboardInterrupt prints its own
        assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr


# A Flask app served by werkzeug on 127.0.0.1 in a child interpreter: a request
# starts a task that never ends, then the server stops and the program exits,
# so that the extension's exit hook shuts down and gives up on the task.
SERVED_WITH_A_STUCK_TASK = """
import os, signal, sys, threading, urllib.request
import makeparallel as mp
from flask import Flask
from makeparallel.flask import MakeParallel
from werkzeug.serving import make_server

mp.configure(exit_timeout=60)  # exit must not wait again after the extension's shutdown
never, running = threading.Event(), threading.Event()

""" + EXIT_WAITS + """
@mp.parallel
def stuck(interrupt):
    running.set()
    while interrupt and not exit_waits():
        never.wait(0.001)
    if interrupt:
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, once the exit waits for this task
    never.wait()

app = Flask(__name__)
app.config["MAKEPARALLEL_SHUTDOWN_TIMEOUT"] = {timeout}
MakeParallel(app)

@app.get("/start")
def start():
    stuck({interrupt})
    assert running.wait(30)
    return "running"

server = make_server("127.0.0.1", 0, app, threaded=True)
serving = threading.Thread(target=server.serve_forever)
serving.start()
with urllib.request.urlopen(f"http://127.0.0.1:{{server.server_port}}/start", timeout=30) as answer:
    print(answer.read().decode(), flush=True)
server.shutdown()
serving.join(30)
server.server_close()
"""

# How the extension's wait at exit ends: its settings, and what the warning must say.
EXTENSION_WAIT_ENDS = {
    "its timeout passes": (
        {"timeout": 0.2, "interrupt": False},
        (
            "abandoned after the makeparallel.flask extension's shutdown waited 0.2 s; "
            'raise app.config["MAKEPARALLEL_SHUTDOWN_TIMEOUT"] to wait for them'
        ),
    ),
    "a Ctrl-C": (
        {"timeout": None, "interrupt": True},
        (
            "abandoned after Ctrl-C ended the makeparallel.flask extension's shutdown; "
            "a task stops sooner when it calls makeparallel.check_cancelled()"
        ),
    ),
}


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT (POSIX)")
@pytest.mark.parametrize("end", EXTENSION_WAIT_ENDS)
def test_the_warning_at_exit_says_how_the_extensions_shutdown_ended_and_names_its_setting(end: str) -> None:
    # The library's exit hook said "abandoned after makeparallel.shutdown(); give
    # shutdown() a longer timeout_secs", a call and an argument the program never
    # made: the timeout is MAKEPARALLEL_SHUTDOWN_TIMEOUT, and after a Ctrl-C no
    # longer timeout would have helped.
    settings, says = EXTENSION_WAIT_ENDS[end]
    done = run_fresh_interpreter(SERVED_WITH_A_STUCK_TASK.format(**settings))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "running\n"
    assert f"1 task(s) still unfinished at interpreter exit were {says}" in done.stderr, done.stderr
    assert "timeout_secs" not in done.stderr and "makeparallel.shutdown()" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr


def test_a_missing_flask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.setitem(sys.modules, "flask", None)
    monkeypatch.delitem(sys.modules, "makeparallel.flask")
    with pytest.raises(ImportError, match=r'pip install "makeparallel\[flask\]"'):
        importlib.import_module("makeparallel.flask")
