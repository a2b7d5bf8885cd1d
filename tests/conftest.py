"""Shared fixtures: every test starts from a clean runtime and must leave one.

After each test: no task may be left unfinished, no thread other than the pool's
own daemon workers may be left alive, and every setting a test changed is put
back. A test that leaks fails here, named, instead of breaking a later one.
"""

from __future__ import annotations

import compileall
import gc
import signal
import sys
import threading
import weakref
from pathlib import Path

import pytest

import makeparallel as mp
from makeparallel import _metrics, _runtime
from makeparallel._backends._thread import default_thread_count
from makeparallel._circuit import all_breakers
from makeparallel.testing import wait_until_idle

# A program started with Ctrl-C ignored keeps it ignored (CPython installs its
# handler only where SIGINT is at its default), and so do the programs it starts:
# the children the Ctrl-C tests interrupt ignored it and ran to their end. A shell
# starts a background job so (`pytest &` where job control is off). A SIGINT
# blocked in the signal mask, which a new program inherits too, does the same.
# The tests' children start as from a terminal; so does this process, which a
# Ctrl-C now stops.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if hasattr(signal, "pthread_sigmask"):
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _cache_bytecode() -> None:
    """Compile the package and the tests' modules once, for every interpreter the tests start.

    Where the environment says not to write bytecode (``PYTHONDONTWRITEBYTECODE``),
    each template, worker and script the tests start compiled the package, and the
    test module it imported, from source: half a second a process on a 2-core
    machine, where an installed package has its bytecode. A cached file is checked
    against its source's time and size, so an edited module is compiled again.
    """
    if sys.dont_write_bytecode:
        for folder in (Path(mp.__file__).parent, Path(__file__).parent):
            compileall.compile_dir(folder, quiet=1)


_cache_bytecode()


@pytest.fixture(autouse=True)
def clean_runtime(request: pytest.FixtureRequest) -> object:
    # A module that runs a foreign engine (a Dask cluster) names the prefixes of
    # the threads that engine starts on its own: those are not the test's leaks.
    own_threads = ("makeparallel-", *getattr(request.module, "ENGINE_THREAD_PREFIXES", ()))
    if "caplog" in request.fixturenames:
        # A failure an earlier test left unread is logged as its handle is collected: here,
        # in this test's setup, not among the records its body reads whenever the collector runs.
        gc.collect()
    before = set(threading.enumerate())
    breakers_before = weakref.WeakSet(all_breakers())
    yield
    idle = wait_until_idle(10)
    mp.reset_shutdown()
    mp.set_max_concurrent_tasks(None)
    _runtime.use_default_backend(None)
    mp.configure(exit_timeout=5.0, async_cancel="cooperative", process_contextvars=[])
    mp.configure_thread_pool(num_threads=default_thread_count(), stack_size=None)
    if "process" in _runtime._backends:  # never start the process pool just to size it
        mp.configure_process_pool(num_workers=default_thread_count())
        # Workers a test killed are its own restart storm, not the next test's.
        _runtime._backends["process"]._recent_restarts.clear()  # type: ignore[attr-defined]
    # Nor is an executor it shut down or broke, whose adapter lives on until collected,
    # reported as refusing every task (health() unhealthy) for seconds after.
    for adapter in list(_runtime._adapters.values()):
        adapter._refused = None  # type: ignore[attr-defined]
    # Nor is a circuit breaker it left open, alive until collected, which health() reports.
    for breaker in all_breakers():
        if breaker not in breakers_before and breaker.state is mp.CircuitState.OPEN:
            breaker.reset()
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith(own_threads)
    ]
    assert idle, "the test left tasks unfinished (release its gates or cancel them)"
    assert not leaked, f"the test leaked threads: {leaked}"


@pytest.fixture
def gate() -> object:
    """An event that is always set at teardown, so no task waits on it forever."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def own_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the test a registry of function records of its own, put back after it.

    The records are kept for the process's life (``reset_metrics`` zeroes them),
    and by the time the exporters' tests run the suite has recorded over 500
    functions: each scrape or flush then rendered them all, about 43 lines
    each, seconds per test under coverage. The tests check what the exporters
    make of their own functions' records, which they name uniquely.
    """
    monkeypatch.setattr(_metrics, "_records", {})
    monkeypatch.setattr(_metrics, "_short_names", {})
