"""Prometheus export: a collector for a ``prometheus_client`` registry, and a server.

    from makeparallel.prometheus import start_http_server
    start_http_server(9100)            # http://127.0.0.1:9100/metrics

The collector reads :func:`makeparallel.metrics_snapshot` at each scrape, so it
costs nothing per task. Metrics, labelled by function (and pool):

* ``makeparallel_tasks_total{function,status}`` (counter; status: completed,
  failed, cancelled, timed_out) and ``makeparallel_tasks_submitted_total{function}``;
* ``makeparallel_tasks_retried_total{function}`` (tasks run again by their retry
  policy) and ``makeparallel_task_retries_total{function}`` (attempts after the first);
* ``makeparallel_tasks_running{function}``, ``makeparallel_tasks_queued{function}`` (a
  task waiting to retry is queued);
* ``makeparallel_task_duration_seconds{function}`` and
  ``makeparallel_task_queue_wait_seconds{function}`` (histograms, buckets a factor
  of 4 apart from 1 us);
* ``makeparallel_pool_workers{pool,state}`` (busy, idle, starting), ``makeparallel_pool_queued_tasks{pool}``,
  ``makeparallel_pool_worker_restarts_total{pool}``; a pool that cannot tell
  its live workers (an executor given as ``backend=``, the sync pool) has busy
  only: for an executor, its workers running the library's tasks;
* ``makeparallel_circuit_state{breaker,state}`` (1 for the breaker's state, 0 for
  the others) and ``makeparallel_circuit_calls_total{breaker,kind}`` (successful,
  failed, slow, not_permitted); the label is the breaker's name, or
  ``<name>#2``, ``#3``... for the newer of several live breakers of that name;
* with ``configure_memory_limit``: ``makeparallel_memory_paused`` and
  ``makeparallel_memory_pauses_total``.

Needs the optional extra: ``pip install "makeparallel[prometheus]"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import makeparallel

from ._validation import as_integer

__all__ = ["MakeparallelCollector", "register", "start_http_server"]

_STATUSES = (
    ("completed", "completed_tasks"),
    ("failed", "failed_tasks"),
    ("cancelled", "cancelled_tasks"),
    ("timed_out", "timed_out_tasks"),
)


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as error:
        raise ImportError(
            "the Prometheus export needs prometheus-client: "
            'pip install "makeparallel[prometheus]"'
        ) from error
    return prometheus_client


class MakeparallelCollector:
    """A ``prometheus_client`` collector of makeparallel's metrics."""

    def collect(self) -> Iterator[Any]:
        return _families(makeparallel.metrics_snapshot())

    def describe(self) -> list[Any]:
        # Every family the collector may yield, without samples: the registry
        # checks these names, so that registering the collector twice (or next to
        # a collector of the same names) raises ValueError. Described as none, it
        # was taken twice, and each scrape served every sample twice, which
        # Prometheus rejects.
        return list(_families(_DESCRIBED))


# A snapshot that yields every family, for describe(): names only, no function or pool.
_DESCRIBED: dict[str, Any] = {
    "functions": {},
    "pools": {},
    "circuit_breakers": {},
    "memory_limit": {"paused": False, "pauses": 0},
}


def _families(snapshot: dict[str, Any]) -> Iterator[Any]:
    """The metric families of ``snapshot`` (a :func:`makeparallel.metrics_snapshot`)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    functions = snapshot["functions"]
    ended = CounterMetricFamily(
        "makeparallel_tasks", "Tasks that ended, by function and how", labels=["function", "status"]
    )
    submitted = CounterMetricFamily(
        "makeparallel_tasks_submitted", "Tasks submitted, by function", labels=["function"]
    )
    retried = CounterMetricFamily(
        "makeparallel_tasks_retried", "Tasks run again by their retry policy", labels=["function"]
    )
    retries = CounterMetricFamily(
        "makeparallel_task_retries", "Attempts after the first, by function", labels=["function"]
    )
    running = GaugeMetricFamily("makeparallel_tasks_running", "Tasks running now", labels=["function"])
    queued = GaugeMetricFamily(
        "makeparallel_tasks_queued", "Tasks waiting to start (or to retry)", labels=["function"]
    )
    durations = HistogramMetricFamily(
        "makeparallel_task_duration_seconds",
        "Run time of tasks that ran to their end",
        labels=["function"],
    )
    waits = HistogramMetricFamily(
        "makeparallel_task_queue_wait_seconds",
        "Time tasks waited for a worker: from submission (a retry: from when it was due) to start",
        labels=["function"],
    )
    for function, metrics in functions.items():
        name = _label(function)
        for status, field in _STATUSES:
            ended.add_metric([name, status], metrics[field])
        submitted.add_metric([name], metrics["total_tasks"])
        retried.add_metric([name], metrics["retried_tasks"])
        retries.add_metric([name], metrics["retries"])
        running.add_metric([name], metrics["running_tasks"])
        queued.add_metric([name], metrics["queued_tasks"])
        durations.add_metric(
            [name], _buckets(metrics["execution_time_buckets"]), metrics["execution_time_sum_seconds"]
        )
        waits.add_metric([name], _buckets(metrics["queue_wait_buckets"]), metrics["queue_wait_sum_seconds"])
    yield from (ended, submitted, retried, retries, running, queued, durations, waits)
    yield from _pool_metrics(snapshot["pools"])
    yield from _circuit_metrics(snapshot["circuit_breakers"])
    yield from _memory_metrics(snapshot["memory_limit"])


def _label(value: str) -> str:
    """``value`` as a label value UTF-8 can encode: a lone surrogate as its escape (``\\udcff``).

    A name made of ``os.fsdecode()`` of a file name that is not UTF-8 holds one,
    and ``prometheus_client`` writes the whole page in UTF-8: one such name
    failed every scrape (HTTP 500), every other metric with it.
    """
    return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")


def _buckets(pairs: list[list[Any]]) -> list[tuple[str, float]]:
    return [(le if isinstance(le, str) else repr(float(le)), count) for le, count in pairs]


def _pool_metrics(pools: dict[str, dict[str, Any]]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    workers = GaugeMetricFamily("makeparallel_pool_workers", "Pool workers, by state", labels=["pool", "state"])
    queue = GaugeMetricFamily("makeparallel_pool_queued_tasks", "Tasks queued in the pool", labels=["pool"])
    restarts = CounterMetricFamily(
        "makeparallel_pool_worker_restarts", "Worker processes replaced after a crash or kill", labels=["pool"]
    )
    for pool, info in pools.items():
        live = info.get("live_threads", info.get("live_workers"))
        busy = info.get("busy_threads", info.get("busy_workers", 0))
        workers.add_metric([pool, "busy"], busy)
        # An executor given as backend= does not say how many workers it has alive, nor the
        # sync pool: no idle count rather than 0 (which reads as a pool with none to spare).
        if live is not None:
            starting = info.get("starting_workers", 0)  # a process pool's: neither busy nor idle
            workers.add_metric([pool, "idle"], max(0, live - busy - starting))
            workers.add_metric([pool, "starting"], starting)
        queue.add_metric([pool], info.get("queued_tasks", 0))
        if "worker_restarts" in info:
            restarts.add_metric([pool], info["worker_restarts"])
    yield from (workers, queue, restarts)


_CIRCUIT_STATES = ("closed", "open", "half_open")
_CIRCUIT_CALLS = (
    ("successful", "successful_calls"),
    ("failed", "failed_calls"),
    ("slow", "slow_calls"),
    ("not_permitted", "not_permitted_calls"),
)


def _circuit_metrics(breakers: dict[str, dict[str, Any]]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    state = GaugeMetricFamily(
        "makeparallel_circuit_state", "1 for the circuit breaker's current state", labels=["breaker", "state"]
    )
    calls = CounterMetricFamily(
        "makeparallel_circuit_calls", "Calls through the circuit breaker, by outcome", labels=["breaker", "kind"]
    )
    for label, stats in breakers.items():
        name = _label(label)
        for value in _CIRCUIT_STATES:
            state.add_metric([name, value], 1.0 if stats["state"] == value else 0.0)
        for kind, field in _CIRCUIT_CALLS:
            calls.add_metric([name, kind], stats[field])
    yield from (state, calls)


def _memory_metrics(memory: dict[str, Any] | None) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if memory is None:
        return
    paused = GaugeMetricFamily("makeparallel_memory_paused", "1 while the memory limit pauses the pools")
    paused.add_metric([], 1.0 if memory["paused"] else 0.0)
    pauses = CounterMetricFamily("makeparallel_memory_pauses", "Times the memory limit paused the pools")
    pauses.add_metric([], memory["pauses"])
    yield from (paused, pauses)


def register(registry: Any = None) -> MakeparallelCollector:
    """Register a collector with ``registry`` (default: the global one); return it.

    Raises:
        TypeError: ``registry`` is no registry, with ``register()`` and
            ``collect()`` (a port, as if this served one: that is
            :func:`start_http_server`; the ``prometheus_client.registry``
            module; or the registry class itself, not an instance).
        ValueError: ``registry`` has makeparallel's collector already (each
            metric would be served twice), or another collector of one of the
            same metric names (the application's own ``makeparallel_tasks``).
            prometheus_client's own refusal is chained as ``__cause__``.
    """
    client = _client()
    collector = MakeparallelCollector()
    if registry is None:
        registry = client.REGISTRY
    else:
        _check_registry(registry, "the global one, prometheus_client.REGISTRY")
    try:
        registry.register(collector)
    except ValueError as error:
        # prometheus_client's refusal lists some 40 series names and says
        # neither which collector holds them nor what to do.
        if not _has_collector(registry):
            raise
        raise ValueError(
            "makeparallel's collector is registered with this registry already "
            "(makeparallel_tasks and its other metrics would be served twice): register it "
            "once per registry; start_http_server() and the web routes keep the one there"
        ) from error
    return collector


def start_http_server(port: int, addr: str = "127.0.0.1", registry: Any = None) -> Any:
    """Register the collector and serve ``/metrics`` on ``addr:port``.

    Returns what ``prometheus_client.start_http_server`` returns (the server and
    its thread in current versions; ``server.shutdown()`` stops serving, then
    ``server.server_close()`` frees the port: without it, a scrape waits
    until its timeout and a new server on that port fails). The
    port may be an integer of any type (NumPy's ``int64`` too). The
    address defaults to loopback: expose it deliberately. A registry that has
    the collector already (:func:`register` called first, or a server on
    another port) keeps that one: each metric is served once.

    Raises:
        TypeError: ``port`` is not an integer (nor is a ``str``: convert
            it with ``int()``), ``addr`` is not a ``str`` (``None`` too,
            which ``prometheus_client`` binds as every interface), or
            ``registry`` is no registry, with ``register()`` and ``collect()``
            (the class, not an instance): nothing is served.
        ValueError: ``port`` is outside 0 to 65535 (0: any free port),
            ``addr`` is empty or no name the socket can encode (an empty
            label, a lone surrogate), or ``registry`` has another collector of one of the library's
            metric names (the application's own ``makeparallel_tasks``):
            served, the page would have none of the library's metrics.
        OSError: ``addr:port`` cannot be bound (a server listens there
            already), or ``addr`` names no host (``socket.gaierror``): the
            socket's error, of its kind and number, its message naming both.
    """
    client = _client()
    # A plain int: a socket address takes no NumPy one ("Int or String expected"). Checked
    # here: the socket's own errors said "Servname not supported for ai_socktype" for -1.
    # A str is refused too: prometheus_client binds none ("'str' object cannot be
    # interpreted as an integer" for "9100"), and registered the collector first.
    checked = None if isinstance(port, str) else as_integer(port)
    if checked is None:
        hint = " (a str: convert it with int() first)" if isinstance(port, str) else ""
        raise TypeError(f"port must be an int from 0 to 65535 (0: any free port), got {port!r}{hint}")
    if not 0 <= checked <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535 (0: any free port), got {port!r}")
    port = checked
    if not isinstance(addr, str) or not addr:
        # None reached prometheus_client, which bound it as the wildcard: an unset
        # addr=os.environ.get(...) served the metrics on every interface.
        wrong = (
            "addr must be a host name or address, a non-empty str (the default '127.0.0.1' "
            f"serves this host only; '0.0.0.0' or '::' every interface), got {addr!r}"
        )
        raise ValueError(wrong) if isinstance(addr, str) else TypeError(wrong)
    try:
        addr.encode("idna")  # as the socket encodes it: its bare UnicodeError named no address
    except UnicodeError as error:
        raise ValueError(
            "addr must be a host name or address, a non-empty str (the default '127.0.0.1' serves this "
            f"host only; '0.0.0.0' or '::' every interface), got {addr!r} ({error})"
        ) from None
    if registry is None:
        registry = client.REGISTRY
    else:
        _check_registry(registry, "the global one, prometheus_client.REGISTRY")
    _register_once(registry)
    try:
        return client.start_http_server(port, addr=addr, registry=registry)
    except OSError as error:
        # The socket's own message named no address ("[Errno -2] Name or service not known",
        # "[Errno 98] Address already in use"): said again, of the same kind and number.
        if error.errno is None:
            raise
        raise type(error)(error.errno, f"cannot serve /metrics on {addr} port {port}: {error.strerror}") from error


def _check_registry(registry: Any, default: str) -> None:
    """Raise ``TypeError`` where ``registry`` is no registry; ``default`` says what ``None`` gives.

    Shared by :func:`register`, :func:`start_http_server` and the web routes,
    each naming its own default. A registry is read by the two methods used,
    ``register()`` and ``collect()``, not by its class: a registry of another
    kind (a wrapper of a ``CollectorRegistry``) is served as one. What lacks
    ``register()`` (a port given as if it were served, the
    ``prometheus_client.registry`` module, a ``RestrictedRegistry``) failed
    inside prometheus_client, ``'int' object has no attribute 'register'``,
    naming neither the argument nor the fix; what lacks ``collect()`` was
    taken, and failed every scrape. The class ``CollectorRegistry`` has both,
    unbound: it is refused too.
    """
    if isinstance(registry, type) or not (
        callable(getattr(registry, "register", None)) and callable(getattr(registry, "collect", None))
    ):
        raise TypeError(
            "registry must be a prometheus_client registry (a CollectorRegistry(), or an object with its "
            f"register() and collect()), or None for {default}, got {registry!r}: to serve the metrics on "
            "a port, call start_http_server(port)"
        )


def _register_once(registry: Any) -> None:
    """Register a collector with ``registry`` unless it has one already.

    Raises:
        ValueError: ``registry`` has another collector of the library's metric
            names, which took them: the library's metrics would not be served.
    """
    try:
        register(registry)
    except ValueError as error:
        if not _has_collector(registry):
            raise ValueError(
                f"the registry has another collector of makeparallel's metric names ({error}): "
                "none of makeparallel's metrics would be served; rename that metric, or serve "
                "makeparallel's from a registry of its own"
            ) from error


def _has_collector(registry: Any) -> bool:
    """Whether ``registry`` holds a :class:`MakeparallelCollector`.

    ``prometheus_client`` lists no collectors publicly: its registry's map of
    them is read. A registry without that map (another version, a registry of
    another kind) is taken to hold one, as every refusal was taken before.
    """
    collectors = getattr(registry, "_collector_to_names", None)
    if collectors is None:
        return True
    return any(isinstance(collector, MakeparallelCollector) for collector in list(collectors))
