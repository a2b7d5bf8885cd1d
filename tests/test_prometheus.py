"""Prometheus export: a real exposition server on loopback, scraped and parsed."""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
import socket
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pool_helpers import (
    Flags,
    two_queued_behind_a_busy_executor,
    two_queued_in_an_executors_pool,
)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_process_workers import (
    hold_a_task_for_the_starting_worker,
    one_of_two_workers_starting,
)

import makeparallel
import makeparallel as mp

_BOUND_BEFORE = "prometheus" in vars(makeparallel)
import makeparallel.prometheus as mp_prometheus  # noqa: E402

if not _BOUND_BEFORE:
    # Importing a submodule binds it on the package, and test_public_api checks the
    # package's public attributes: leave the package as this file found it.
    del makeparallel.prometheus

pytestmark = pytest.mark.usefixtures("own_metrics")  # conftest: the suite's other records stay out

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def unique_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


class Exposition:
    """The server ``start_http_server`` started, and how to scrape it."""

    def __init__(self, port: int, registry: CollectorRegistry) -> None:
        self.port = port
        self.registry = registry
        # No proxy from the environment may take a request to loopback elsewhere.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def scrape(self) -> str:
        with self._opener.open(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            body: bytes = response.read()
            return body.decode()

    def samples(self) -> tuple[dict[str, Any], Samples]:
        families = {family.name: family for family in text_string_to_metric_families(self.scrape())}
        samples: Samples = {}
        for family in families.values():
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return families, samples


@contextlib.contextmanager
def registered() -> Iterator[tuple[CollectorRegistry, mp_prometheus.MakeparallelCollector]]:
    """A fresh registry with the collector registered, unregistered afterwards."""
    registry = CollectorRegistry()
    collector = mp_prometheus.register(registry)
    try:
        yield registry, collector
    finally:
        registry.unregister(collector)


@contextlib.contextmanager
def served(registry: CollectorRegistry, port: Any = 0) -> Iterator[Exposition]:
    """``start_http_server`` on ``registry``, stopped afterwards with every thread it started."""
    before = set(threading.enumerate())
    server, thread = mp_prometheus.start_http_server(port, registry=registry)
    try:
        assert server.server_address[0] == "127.0.0.1"
        yield Exposition(server.server_port, registry)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        assert not thread.is_alive(), "the exposition server's thread did not stop"
        # Request threads (daemons the server does not track) end right after
        # their response; wait for them so that none outlives the test.
        for other in set(threading.enumerate()) - before:
            if not other.name.startswith("makeparallel-"):
                other.join(10)


@pytest.fixture
def exposition() -> Iterator[Exposition]:
    with served(CollectorRegistry()) as served_here:
        yield served_here


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs.items()))


def run_every_outcome(name: str, gate: threading.Event) -> None:
    """Three tasks succeed, one fails, one is cancelled while running, one times out."""
    running = threading.Event()

    @mp.parallel(backend="thread", name=name)
    def work(mode: str) -> str:
        if mode == "fail":
            raise ValueError("failed on purpose")
        if mode in ("cancel", "timeout"):
            running.set()
            while not gate.wait(0.005):
                mp.check_cancelled()
        return mode

    for _ in range(3):
        assert work("ok").get(10) == "ok"
    with pytest.raises(ValueError):
        work("fail").get(10)
    cancelled = work("cancel")
    assert running.wait(10)
    assert cancelled.cancel()
    timed_out = work.options(timeout=0.05)("timeout")
    with pytest.raises(mp.TaskTimeoutError):
        timed_out.get(10)


def test_scraped_counts_histograms_and_pool_gauges(exposition: Exposition, gate: threading.Event) -> None:
    name = unique_name("prometheus")
    run_every_outcome(name, gate)
    families, samples = exposition.samples()

    for status, expected in (("completed", 3), ("failed", 1), ("cancelled", 1), ("timed_out", 1)):
        assert samples[("makeparallel_tasks_total", labels(function=name, status=status))] == expected, status
    assert families["makeparallel_tasks"].type == "counter"
    assert samples[("makeparallel_tasks_submitted_total", labels(function=name))] == 6
    assert samples[("makeparallel_tasks_running", labels(function=name))] == 0
    assert samples[("makeparallel_tasks_queued", labels(function=name))] == 0

    # Execution time: the four tasks that ran to their end (succeeded or failed).
    assert families["makeparallel_task_duration_seconds"].type == "histogram"
    buckets = [
        (le, value)
        for (sample, sample_labels), value in samples.items()
        if sample == "makeparallel_task_duration_seconds_bucket"
        for le in [dict(sample_labels)["le"]]
        if dict(sample_labels)["function"] == name
    ]
    bounds = [float(le) for le, _ in buckets]
    assert bounds == sorted(bounds) and math.isinf(bounds[-1])
    assert buckets[-1][0] == "+Inf"
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), "bucket counts must be cumulative"
    count = samples[("makeparallel_task_duration_seconds_count", labels(function=name))]
    assert counts[-1] == count == 4
    assert samples[("makeparallel_task_duration_seconds_sum", labels(function=name))] > 0
    # Every task started, so every one has a queue wait.
    assert samples[("makeparallel_task_queue_wait_seconds_count", labels(function=name))] == 6
    assert samples[("makeparallel_task_queue_wait_seconds_bucket", labels(function=name, le="+Inf"))] == 6

    # The thread pool's gauges (busy may still count the threads of the cancelled
    # and timed-out tasks, which return at their next check_cancelled()).
    busy = samples[("makeparallel_pool_workers", labels(pool="thread", state="busy"))]
    idle = samples[("makeparallel_pool_workers", labels(pool="thread", state="idle"))]
    assert busy >= 0 and idle >= 0
    assert samples[("makeparallel_pool_queued_tasks", labels(pool="thread"))] == 0
    assert families["makeparallel_pool_workers"].type == "gauge"
    assert families["makeparallel_pool_queued_tasks"].type == "gauge"


def test_the_buckets_match_the_snapshot(exposition: Exposition) -> None:
    name = unique_name("prometheus-buckets")

    @mp.parallel(backend="sync", name=name)
    def work(x: int) -> int:
        return x

    for x in range(5):
        work(x).get(5)
    _, samples = exposition.samples()
    snapshot = mp.metrics_snapshot()["functions"][name]
    for le, expected in snapshot["execution_time_buckets"]:
        key = "+Inf" if le == "+Inf" else repr(float(le))
        scraped = samples[("makeparallel_task_duration_seconds_bucket", labels(function=name, le=key))]
        assert scraped == expected, le
    assert samples[("makeparallel_task_duration_seconds_sum", labels(function=name))] == pytest.approx(
        snapshot["execution_time_sum_seconds"]
    )


@pytest.mark.timeout(30)
def test_live_gauges_while_tasks_run_and_wait(exposition: Exposition, gate: threading.Event) -> None:
    mp.configure_thread_pool(1)
    name = unique_name("prometheus-live")
    running = threading.Event()

    @mp.parallel(backend="thread", name=name)
    def held() -> None:
        running.set()
        assert gate.wait(10)

    first = held()
    assert running.wait(10)
    rest = [held() for _ in range(2)]
    _, samples = exposition.samples()
    assert samples[("makeparallel_tasks_running", labels(function=name))] == 1
    assert samples[("makeparallel_tasks_queued", labels(function=name))] == 2
    assert samples[("makeparallel_pool_queued_tasks", labels(pool="thread"))] == 2
    assert samples[("makeparallel_pool_workers", labels(pool="thread", state="busy"))] >= 1
    gate.set()
    for handle in [first, *rest]:
        handle.get(10)
    _, samples = exposition.samples()
    assert samples[("makeparallel_tasks_running", labels(function=name))] == 0
    assert samples[("makeparallel_tasks_queued", labels(function=name))] == 0


def completed_once(label: str) -> tuple[str, mp.ParallelFunction[[], None]]:
    """A function named uniquely from ``label``, run once to its end; its name and the function."""

    name = unique_name(label)

    @mp.parallel(backend="sync", name=name)
    def work() -> None:
        pass

    work().get(5)
    return name, work


def served_once(page: str, name: str) -> bool:
    """Whether the exposition ``page`` has the submissions family, and ``name``'s one submission, once each."""
    return (
        page.count("# TYPE makeparallel_tasks_submitted_total counter") == 1
        and page.count(f'makeparallel_tasks_submitted_total{{function="{name}"}} 1.0') == 1
    )


def test_register_on_a_fresh_registry() -> None:
    name, work = completed_once("prometheus-registered")
    with registered() as (registry, collector):
        assert isinstance(collector, mp_prometheus.MakeparallelCollector)
        assert registry.get_sample_value("makeparallel_tasks_total", {"function": name, "status": "completed"}) == 1
        assert registry.get_sample_value("makeparallel_tasks_submitted_total", {"function": name}) == 1
        work().get(5)  # read at each collection: nothing is cached
        assert registry.get_sample_value("makeparallel_tasks_total", {"function": name, "status": "completed"}) == 2


def test_without_prometheus_client_register_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # "import prometheus_client" fails
    with pytest.raises(ImportError, match=r"makeparallel\[prometheus\]"):
        mp_prometheus.register(object())
    with pytest.raises(ImportError, match=r"makeparallel\[prometheus\]"):
        mp_prometheus.start_http_server(0)


class _RegistryWithoutCollect:
    """Takes the collector, but no page can be made of it: ``generate_latest`` calls ``collect()``."""

    def register(self, collector: Any) -> None:
        pass


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call", ["register", "start_http_server"])
@pytest.mark.parametrize(
    "registry",
    [
        9100,
        "127.0.0.1",
        "default",
        CollectorRegistry,
        importlib.import_module("prometheus_client.registry"),
        CollectorRegistry().restricted_registry([]),
        _RegistryWithoutCollect(),
    ],
    ids=["port", "addr", "name", "class", "module", "restricted", "without-collect"],
)
def test_a_registry_that_is_no_registry_is_refused_saying_what_to_pass(call: str, registry: Any) -> None:
    # Each failed inside prometheus_client, naming no argument: register(9100), as if it served a
    # port, with "'int' object has no attribute 'register'", the class with a missing argument.
    # One without collect() was taken, and every scrape of it failed.
    message = (
        r"registry must be a prometheus_client registry \(a CollectorRegistry\(\), or an object with its register\(\) "
        r"and collect\(\)\), or None for the global one, prometheus_client.REGISTRY, got .*: "
        r"to serve the metrics on a port, call start_http_server\(port\)"
    )
    with pytest.raises(TypeError, match=message):
        if call == "register":
            mp_prometheus.register(registry)
        else:
            mp_prometheus.start_http_server(0, registry=registry)


def test_the_module_imports_without_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "makeparallel.prometheus")  # put back afterwards
    missing = object()
    bound = vars(makeparallel).get("prometheus", missing)
    try:
        fresh = importlib.import_module("makeparallel.prometheus")
        assert fresh is not mp_prometheus
        with pytest.raises(ImportError, match=r"pip install \"makeparallel\[prometheus\]\""):
            fresh.register()
    finally:
        if bound is missing:
            if "prometheus" in vars(makeparallel):
                delattr(makeparallel, "prometheus")
        else:
            makeparallel.prometheus = bound


def add_one(x: int) -> int:
    return x + 1


@pytest.mark.timeout(60)
def test_process_pool_gauges_and_restarts(exposition: Exposition) -> None:
    assert mp.parallel(backend="process", name=unique_name("prometheus-process"))(add_one)(1).get(30) == 2
    _, samples = exposition.samples()
    info = mp.get_process_pool_info()
    assert samples[("makeparallel_pool_worker_restarts_total", labels(pool="process"))] == info["worker_restarts"]
    assert samples[("makeparallel_pool_queued_tasks", labels(pool="process"))] == 0
    assert ("makeparallel_pool_workers", labels(pool="process", state="idle")) in samples


@pytest.mark.timeout(60)
def test_a_process_worker_still_starting_is_neither_busy_nor_idle(exposition: Exposition, tmp_path: Any) -> None:
    # It read as busy when a task was held for it, and as idle otherwise.
    flags = Flags(str(tmp_path))
    with one_of_two_workers_starting(tmp_path):
        blocking, held = hold_a_task_for_the_starting_worker(flags)
        try:
            _, samples = exposition.samples()
        finally:
            flags.set("go on")
        blocking.get(timeout=30)
    held.get(timeout=30)
    states = {
        state: samples.get(("makeparallel_pool_workers", labels(pool="process", state=state)))
        for state in ("busy", "idle", "starting")
    }
    assert states == {"busy": 1, "idle": 0, "starting": 1}


@pytest.mark.timeout(30)
def test_an_executor_pool_gauge_counts_its_queued_tasks(exposition: Exposition) -> None:
    # It read 0 for an executor given as backend=, with tasks queued behind its busy worker.
    with two_queued_behind_a_busy_executor(unique_name("prometheus-executor")) as pool:
        _, samples = exposition.samples()
        pool_name = f"executor-{id(pool):x}"
        assert samples[("makeparallel_pool_queued_tasks", labels(pool=pool_name))] == 2
        assert mp.health()["pools"][pool_name]["queued_tasks"] == 2
        # Busy read 0, and idle 0 too: the pool looked full and still. Its busy worker runs
        # one of the library's tasks; how many threads the executor has, it does not say.
        assert samples[("makeparallel_pool_workers", labels(pool=pool_name, state="busy"))] == 1
        assert ("makeparallel_pool_workers", labels(pool=pool_name, state="idle")) not in samples
        assert ("makeparallel_pool_workers", labels(pool=pool_name, state="starting")) not in samples


@pytest.mark.timeout(30)
def test_an_mp_executors_own_pool_has_gauges(exposition: Exposition) -> None:
    # It had none: its pool was missing from the pools exported (and from health()).
    with two_queued_in_an_executors_pool(unique_name("prometheus-mp-executor")) as executor:
        _, samples = exposition.samples()
        pool_name = f"Executor-{id(executor):x}"
        assert samples[("makeparallel_pool_queued_tasks", labels(pool=pool_name))] == 2
        workers = {
            state: samples.get(("makeparallel_pool_workers", labels(pool=pool_name, state=state)))
            for state in ("busy", "idle", "starting")
        }
        assert workers == {"busy": 1, "idle": 0, "starting": 0}


@pytest.mark.timeout(30)
def test_a_port_of_any_integer_type_is_served() -> None:
    # A socket address takes no NumPy int: np.int64(9100), as a computed port is,
    # failed with "OSError: Int or String expected", where StatsdExporter takes it.
    numpy = pytest.importorskip("numpy")
    with served(CollectorRegistry(), port=numpy.int64(0)) as exposition:
        assert "makeparallel_" in exposition.scrape()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("port", "error"),
    [
        (-1, ValueError),
        (65536, ValueError),
        (None, TypeError),
        (9100.0, TypeError),
        (True, TypeError),
        # Passed on as prometheus_client's own, which binds none: "'str' object cannot be
        # interpreted as an integer" for "9100" (from the environment), gaierror for "http".
        ("0", TypeError),
        ("http", TypeError),
    ],
)
def test_a_port_that_cannot_be_bound_is_refused_saying_why(port: Any, error: type) -> None:
    """The socket's own errors said "Servname not supported for ai_socktype" (-1) or "Int or String expected"."""
    registry = CollectorRegistry()
    with pytest.raises(error, match=r"port must be an int from 0 to 65535 \(0: any free port\), got"):
        mp_prometheus.start_http_server(port, registry=registry)
    assert list(registry.collect()) == []  # refused before the collector was registered


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("addr", "error"),
    [
        (None, TypeError),
        (b"127.0.0.1", TypeError),
        (8080, TypeError),
        ("", ValueError),
        (os.fsdecode(b"metrics-\xff"), ValueError),  # an environment variable's bytes that are not UTF-8
        ("metrics..local", ValueError),  # an empty label
    ],
)
def test_an_address_that_is_no_host_is_refused_rather_than_served_on_every_interface(addr: Any, error: type) -> None:
    # addr=None (an unset environment variable: addr=os.environ.get(...)) was
    # passed on, and prometheus_client bound it as the wildcard: the metrics
    # were served on every interface, where the default is loopback so that
    # exposing them is deliberate. "" failed in getaddrinfo, the collector
    # registered already; a name the socket cannot encode (IDNA) with a bare
    # "UnicodeError: encoding with 'idna' codec failed", naming no address.
    registry = CollectorRegistry()
    with pytest.raises(error, match=r"addr must be a host name or address, a non-empty str .*'0\.0\.0\.0'.*, got"):
        mp_prometheus.start_http_server(0, addr=addr, registry=registry)
    assert list(registry.collect()) == []  # refused before the collector was registered, and nothing served


@pytest.mark.timeout(30)
@pytest.mark.parametrize("addr", ["999.1.1.1", "no-such-host.invalid"])
def test_an_address_that_cannot_be_served_on_is_named_in_the_error(addr: str) -> None:
    """It raised the socket's "[Errno -2] Name or service not known", naming no address."""
    registry = CollectorRegistry()
    with pytest.raises(OSError, match=rf"cannot serve /metrics on {re.escape(addr)} port 0: ") as raised:
        mp_prometheus.start_http_server(0, addr=addr, registry=registry)
    assert isinstance(raised.value, socket.gaierror)  # the socket's own kind, its number kept
    assert raised.value.errno == raised.value.__cause__.errno  # type: ignore[union-attr]


@pytest.mark.timeout(30)
def test_registering_twice_is_refused_rather_than_served_twice() -> None:
    name, _ = completed_once("prometheus-twice")
    with registered() as (registry, _):
        # Described as no metric, a second collector went in unchecked and every
        # sample was served twice, which Prometheus rejects as a whole scrape.
        with pytest.raises(ValueError, match="makeparallel_tasks"):
            mp_prometheus.register(registry)
        assert served_once(registry_page(registry), name)


def registry_page(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


@pytest.mark.timeout(30)
def test_a_server_started_on_a_registry_that_has_the_collector_serves_each_metric_once() -> None:
    # register() first, then start_http_server() on the same registry, as the
    # prometheus_client examples do: the server keeps the collector registered.
    name, _ = completed_once("prometheus-registered-first")
    with registered() as (registry, _), served(registry) as exposition:
        assert served_once(exposition.scrape(), name)


@pytest.mark.timeout(30)
def test_a_server_on_a_registry_with_another_collector_of_the_same_names_is_refused() -> None:
    # The user's own metric named as one of the library's took its names first:
    # start_http_server took the refusal for "registered already" and served a
    # page without any of the library's metrics, saying nothing.
    from prometheus_client import Counter

    from makeparallel._web_health import metrics_registry

    registry = CollectorRegistry()
    Counter("makeparallel_tasks", "the application's own", registry=registry)
    with pytest.raises(ValueError, match="makeparallel_tasks") as raised:
        mp_prometheus.start_http_server(0, registry=registry)
    assert "another collector" in str(raised.value)
    with pytest.raises(ValueError, match="another collector"):  # the FastAPI and Flask /metrics
        metrics_registry(registry)


@pytest.mark.timeout(30)
def test_registering_twice_says_the_collector_is_there_already_and_what_to_do() -> None:
    # prometheus_client's own refusal listed some 40 series names
    # ("Duplicated timeseries in CollectorRegistry: {...}"), saying neither that
    # makeparallel's collector was there already nor what to do about it.
    with registered() as (registry, _), pytest.raises(ValueError, match="registered with this registry already") as raised:
        mp_prometheus.register(registry)
    message = str(raised.value)
    assert "register it once per registry" in message
    assert "Duplicated timeseries" not in message
    assert isinstance(raised.value.__cause__, ValueError)  # prometheus_client's refusal, chained


@pytest.mark.timeout(30)
def test_a_name_with_a_lone_surrogate_is_served_escaped_and_the_scrape_keeps_every_other_metric(
    exposition: Exposition,
) -> None:
    # os.fsdecode() of a file name that is not UTF-8 (b"\xff") holds a lone surrogate, which
    # UTF-8 cannot encode: the page could not be written and every scrape failed (HTTP 500).
    undecodable = unique_name("resize") + os.fsdecode(b"\xff.png")
    plain, _ = completed_once("prometheus-plain")
    mp.parallel(backend="sync", name=undecodable)(abs)(-1).get(5)
    breaker = mp.CircuitBreaker(os.fsdecode(b"db-\xfe"))
    _, samples = exposition.samples()
    escaped = undecodable.encode("utf-8", "backslashreplace").decode()
    assert samples[("makeparallel_tasks_total", labels(function=escaped, status="completed"))] == 1
    assert samples[("makeparallel_tasks_total", labels(function=plain, status="completed"))] == 1
    assert samples[("makeparallel_circuit_state", labels(breaker="db-\\udcfe", state="closed"))] == 1
    del breaker
