"""Flask (and any WSGI app): an extension that configures the pools, serves health and metrics, shuts down at exit.

    import makeparallel as mp
    from flask import Flask
    from makeparallel.flask import MakeParallel

    app = Flask(__name__)
    app.config["MAKEPARALLEL_BACKEND"] = "process"
    parallel = MakeParallel(app)            # or MakeParallel(), then parallel.init_app(app)

    @mp.parallel
    def render(n: int) -> bytes: ...

    @app.get("/render/<int:n>")
    def render_route(n: int):
        return render(n).get(timeout=30)

Flask's extension conventions: ``MakeParallel(app=None)`` and ``init_app(app)``,
settings read from ``app.config`` (``MAKEPARALLEL_*`` keys, listed on
:class:`MakeParallel`), the extension's state in ``app.extensions["makeparallel"]``,
and a blueprint with ``GET /health/live``, ``/health/ready`` and ``/metrics``
(the same answers as ``makeparallel.fastapi``).

The pools are shut down once, at interpreter exit (``mp.shutdown`` with the
configured timeout), never per request or per app context: a
``teardown_appcontext`` hook would stop the pools after the first request.
With several apps (an app factory), the one set up last decides the shutdown.
A Ctrl-C that ends the program (uncaught), or that comes while the exit
waits, ends it without waiting, as it ends the library's own wait at exit.

Needs the optional extra: ``pip install "makeparallel[flask]"`` (Flask and
prometheus-client).
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from typing import Any

import makeparallel as mp

from . import _runtime
from ._runtime import ShutdownCall, check_backend, ending_on_interrupt, is_shut_down
from ._validation import as_integer, check_count, is_real
from ._web_health import PROMETHEUS_CONTENT_TYPE, health_answer, metrics_page, metrics_registry

try:
    from flask import Blueprint, Flask, Response, jsonify
except ImportError as error:
    raise ImportError('makeparallel.flask needs Flask: pip install "makeparallel[flask]"') from error

__all__ = ["CONFIG_DEFAULTS", "MakeParallel"]

#: The configuration keys the extension reads, with their defaults.
CONFIG_DEFAULTS: dict[str, Any] = {
    "MAKEPARALLEL_BACKEND": None,  # the default backend; None keeps the library's (or the environment's)
    "MAKEPARALLEL_NUM_THREADS": None,  # thread pool size; None: the usable cores
    "MAKEPARALLEL_NUM_WORKERS": None,  # process pool size; None: the usable cores
    "MAKEPARALLEL_MAX_CONCURRENT_TASKS": None,  # a global limit on tasks in flight
    "MAKEPARALLEL_SHUTDOWN_TIMEOUT": 30.0,  # seconds the exit waits for unfinished tasks
    "MAKEPARALLEL_CANCEL_PENDING": True,  # cancel the tasks not started at exit
    "MAKEPARALLEL_ROUTES": True,  # register the health and metrics blueprint
    "MAKEPARALLEL_URL_PREFIX": "",  # where the blueprint's routes go
}

_WAIT_LONGER = 'raise app.config["MAKEPARALLEL_SHUTDOWN_TIMEOUT"]'  # the advice of exit's warning


def _checked_settings(config: Any) -> dict[str, Any]:
    """The ``MAKEPARALLEL_*`` settings of ``config``, each checked, before any is applied.

    Applied one by one as they were read, a bad one left those before it in
    force (the thread pool resized for an app that failed to start), and an
    error from the library named its own argument (``limit``), not the key.

    Raises:
        ValueError, TypeError: a setting is invalid; the message names its key.
        ImportError, RuntimeError: ``MAKEPARALLEL_BACKEND`` names a backend
            that cannot run here (``"dask"`` without distributed,
            ``"interpreter"`` before Python 3.14); the message names the key.
    """

    def check(key: str, checker: Callable[[Any], Any]) -> Any:
        value = config[key]
        if value is None:
            return None
        try:
            return checker(value)
        except (TypeError, ValueError, ImportError, RuntimeError) as error:  # the last two: check_backend's
            raise type(error)(f"invalid {key} in app.config: {error}") from error

    def num_threads(value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            raise TypeError(f'num_threads must be an int >= 1, "auto" or None, got {value!r}')
        return value if isinstance(value, str) else check_count(value, "num_threads")

    def limit(value: Any) -> int:
        if as_integer(value) == 0:  # no limit, as for set_max_concurrent_tasks; not 0.0 or False
            return 0  # applied: it removes a limit set before (None here would leave that one)
        try:
            return check_count(value, "limit")
        except (TypeError, ValueError) as error:
            raise type(error)(f"the limit must be an int >= 1, or None or 0 for none, got {value!r}") from None

    settings = {
        "MAKEPARALLEL_BACKEND": check("MAKEPARALLEL_BACKEND", check_backend),
        "MAKEPARALLEL_NUM_THREADS": check("MAKEPARALLEL_NUM_THREADS", num_threads),
        "MAKEPARALLEL_NUM_WORKERS": check("MAKEPARALLEL_NUM_WORKERS", lambda value: check_count(value, "num_workers")),
        "MAKEPARALLEL_MAX_CONCURRENT_TASKS": check("MAKEPARALLEL_MAX_CONCURRENT_TASKS", limit),
    }
    timeout = config["MAKEPARALLEL_SHUTDOWN_TIMEOUT"]
    # NaN passed "timeout < 0", and mp.shutdown refused it at exit: this hook failed.
    if timeout is not None and (not is_real(timeout) or not timeout >= 0):
        raise ValueError(f"MAKEPARALLEL_SHUTDOWN_TIMEOUT must be a number of seconds >= 0 or None, got {timeout!r}")
    for key in ("MAKEPARALLEL_CANCEL_PENDING", "MAKEPARALLEL_ROUTES"):
        if not isinstance(config[key], bool):  # the string "false" (from the environment) read as True
            raise TypeError(f"{key} must be True or False, got {config[key]!r}")
    prefix = config["MAKEPARALLEL_URL_PREFIX"]
    if prefix is not None and (not isinstance(prefix, str) or prefix[:1] not in ("", "/")):
        # Flask refused "ops" only as the blueprint was registered, with the pools configured already.
        raise ValueError(f'MAKEPARALLEL_URL_PREFIX must be "" or a path that starts with "/" ("/ops"), got {prefix!r}')
    return settings


class MakeParallel:
    """The Flask extension: ``MakeParallel(app)``, or ``MakeParallel()`` and ``init_app(app)`` later.

    Configuration keys (``app.config``, read by :meth:`init_app`):

    * ``MAKEPARALLEL_BACKEND``: the default backend (``"thread"``, ``"process"``, ``"auto"``, ``"sync"``);
    * ``MAKEPARALLEL_NUM_THREADS``, ``MAKEPARALLEL_NUM_WORKERS``: pool sizes;
    * ``MAKEPARALLEL_MAX_CONCURRENT_TASKS``: a global limit on tasks in flight (``0``: none);
    * ``MAKEPARALLEL_SHUTDOWN_TIMEOUT`` (seconds, default 30) and
      ``MAKEPARALLEL_CANCEL_PENDING`` (default ``True``): the shutdown at exit;
    * ``MAKEPARALLEL_ROUTES`` (default ``True``) and ``MAKEPARALLEL_URL_PREFIX``
      (default ``""``): the health and metrics blueprint.

    Args:
        app: the Flask app to set up now, or ``None`` to call :meth:`init_app` later.
        registry: the ``prometheus_client`` registry to serve at ``/metrics``
            (the library's collector is added to it); default: one of its own.
            Checked where the routes are made (:meth:`init_app`, :meth:`blueprint`).
    """

    def __init__(self, app: Flask | None = None, *, registry: Any = None) -> None:
        self._registry = registry
        self._shutdown_timeout: float | None = CONFIG_DEFAULTS["MAKEPARALLEL_SHUTDOWN_TIMEOUT"]
        self._cancel_pending: bool = CONFIG_DEFAULTS["MAKEPARALLEL_CANCEL_PENDING"]
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Configure the pools from ``app.config``, register the blueprint, arrange the shutdown.

        The library takes tasks again if it was shut down (by :meth:`shutdown`,
        or ``mp.shutdown()``): an app set up after that, by an app factory
        called again, serves as the first one did. A shutdown in another
        thread that is stopping the worker processes is waited for first
        (about two seconds): reopened meanwhile, the library took tasks while
        that shutdown stopped the workers. One still waiting for its tasks is
        not: reopened then, it stops no worker (an app set up by one of those
        tasks held it for good).

        Raises:
            ValueError, TypeError: a ``MAKEPARALLEL_*`` setting is invalid (its
                message names the setting; none of them is applied then);
                ValueError also where the registry has another collector of one
                of the library's metric names, and TypeError where it is no
                registry, with ``register()`` and ``collect()`` (a port):
                nothing applied, and the app may be set up again, the cause fixed.
            AssertionError, ValueError: Flask's own, refusing the blueprint:
                the app served a request already (set it up before, or set
                ``MAKEPARALLEL_ROUTES`` to ``False``), or has a blueprint named
                ``makeparallel``. Nothing is applied, and the app may be set up
                again.
            ImportError, RuntimeError: ``MAKEPARALLEL_BACKEND`` names a backend
                that cannot run here: ``"dask"`` where distributed is not
                installed, ``"interpreter"`` before Python 3.14 (named, and
                nothing applied, as above).
            RuntimeError: ``app`` is set up already, by this extension or
                another (``init_app`` ran for it before); nothing is applied.
                Or called from a signal handler (an app factory run on
                ``SIGHUP``) that interrupted the main thread as it held a lock
                of the library's (a task's submission), which the reset and
                the pools' settings take: raised within 0.25 s, where it
                waited for good; nothing is applied. Set the app up from your
                program's own flow.
        """
        # Before anything is applied: the blueprint's registration refused a second one with
        # Flask's own advice (a name= that init_app has not), the settings applied already.
        if "makeparallel" in app.extensions:
            raise RuntimeError(
                f"makeparallel is already set up on Flask app {app.name!r}: init_app() ran for it before. "
                "Set each app up once; its extension is app.extensions['makeparallel']"
            )
        _runtime.refuse_under_a_held_lock(
            "init_app()",
            _runtime._locks_shutdown_takes,
            "Have the handler set a flag, and set the app up from your program's own flow",
        )
        for key, default in CONFIG_DEFAULTS.items():
            app.config.setdefault(key, default)
        config = app.config
        settings = _checked_settings(config)  # every one, before any is applied
        # The blueprint too, made and registered before anything is applied, and the
        # extension recorded only then: made or registered after, a registry with another
        # collector of the library's names, an app that had served a request, or a blueprint
        # of its name failed the set-up with the pools resized and the extension recorded,
        # and the second try, the cause fixed, was refused as a second set-up.
        if config["MAKEPARALLEL_ROUTES"]:
            app.register_blueprint(self.blueprint(), url_prefix=config["MAKEPARALLEL_URL_PREFIX"] or None)
        app.extensions["makeparallel"] = self
        # A new app takes tasks, as a server's start-up does with the FastAPI lifespan:
        # an app factory called again after a shutdown (each test of a suite) made an
        # app whose every task failed with ShutdownError, its /health/ready 503 for good.
        # Once a shutdown in another thread has stopped the worker processes: reopened
        # meanwhile, the library took tasks while that shutdown went on stopping them.
        # Waited for and reset in one hold of the runtime's lock: in two, a shutdown
        # that began stopping them in between was reset under all the same.
        _runtime.reset_shutdown_once_none_stops()
        if settings["MAKEPARALLEL_BACKEND"] is not None:
            mp.configure(backend=settings["MAKEPARALLEL_BACKEND"])
        if settings["MAKEPARALLEL_NUM_THREADS"] is not None:
            mp.configure_thread_pool(num_threads=settings["MAKEPARALLEL_NUM_THREADS"])
        if settings["MAKEPARALLEL_NUM_WORKERS"] is not None:
            mp.configure_process_pool(num_workers=settings["MAKEPARALLEL_NUM_WORKERS"])
        if settings["MAKEPARALLEL_MAX_CONCURRENT_TASKS"] is not None:
            mp.set_max_concurrent_tasks(settings["MAKEPARALLEL_MAX_CONCURRENT_TASKS"])
        self._shutdown_timeout = config["MAKEPARALLEL_SHUTDOWN_TIMEOUT"]
        self._cancel_pending = config["MAKEPARALLEL_CANCEL_PENDING"]
        # The pools' own exit hook is registered when the first pool starts;
        # starting it now puts this one after it, and atexit runs the last
        # registered first: this shutdown, with its settings, comes first.
        # Registered again at each init_app (atexit.unregister drops the
        # earlier one), so that the app set up last decides, also when its
        # extension set up an app before another extension did.
        mp.get_thread_pool_info()
        atexit.unregister(self._at_exit)
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        """The shutdown at interpreter exit, once for every app, and none after Ctrl-C.

        Each extension registers this hook (an app factory makes one per app):
        the first to run, the extension set up last, shuts down, and the others
        find the library shut down, as a program's own ``mp.shutdown()`` leaves
        it, after which exit does not wait again. Each used to wait its own
        timeout for a stuck task, one after the other.

        A Ctrl-C means the user will not wait, as the library's own exit hook
        (which runs after this one) reads it: when an uncaught one ends the
        program (Python keeps it in ``sys.last_value`` for the exit hooks),
        this hook leaves it to that one, which cancels what has not started and
        waits for nothing. A Ctrl-C during this wait ends it, without the
        traceback Python prints for an error of an exit hook.
        """
        if is_shut_down() or ending_on_interrupt():
            return
        try:
            self.shutdown()
        except KeyboardInterrupt:
            pass  # the library's exit hook then abandons what is left, with a warning that says Ctrl-C ended this wait
        except BaseException as error:  # noqa: BLE001  # logged there, unless SystemExit
            # A signal handler's SystemExit (SIGTERM), or its own error (logged once, with its traceback):
            # that warning says this wait had not ended; no traceback of the hook.
            _runtime.report_error_ending_exit_wait(error, "the makeparallel.flask extension's shutdown")

    def shutdown(self) -> bool:
        """Shut the library down as configured; return whether every task ended in time.

        Called at interpreter exit, unless the library is shut down by then
        (by you, or by the extension of an app set up after this one, whose
        exit hook runs first); call it yourself to stop earlier.
        """
        # mp.shutdown(), remembered as this extension's: exit's warning about the
        # tasks it abandons then names MAKEPARALLEL_SHUTDOWN_TIMEOUT, the setting of
        # its timeout, not a shutdown() call the program never made.
        call = ShutdownCall("the makeparallel.flask extension's shutdown", _WAIT_LONGER)
        return call.run(self._shutdown_timeout, self._cancel_pending)

    def blueprint(self) -> Blueprint:
        """A blueprint named ``makeparallel`` with ``/health/live``, ``/health/ready`` and ``/metrics``.

        Raises:
            ImportError: prometheus-client is not installed.
            TypeError: the registry is no ``prometheus_client`` registry, with
                ``register()`` and ``collect()`` (a port, the registry class).
            ValueError: the registry has another collector of one of the
                library's metric names: ``/metrics`` would serve none of the library's.
        """
        served = metrics_registry(self._registry)
        routes = Blueprint("makeparallel", __name__)

        @routes.get("/health/live")
        def live() -> tuple[Response, int]:
            """200 while the library makes progress, else 503."""
            code, body = health_answer("live")
            return jsonify(body), code

        @routes.get("/health/ready")
        def ready() -> tuple[Response, int]:
            """503 only when the library cannot take work; degraded answers 200."""
            code, body = health_answer("ready")
            return jsonify(body), code

        @routes.get("/metrics")
        def metrics() -> Response:
            """The library's metrics in the Prometheus text format."""
            return Response(metrics_page(served), content_type=PROMETHEUS_CONTENT_TYPE)

        return routes
