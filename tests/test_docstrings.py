"""Public docstrings say what the code does: the parameters they document exist,
and the backends they list are the runtime's backends."""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

import makeparallel as mp
from makeparallel._decorators import OPTION_NAMES
from makeparallel._runtime import BACKEND_NAMES

PUBLIC_CALLABLES = sorted(name for name in mp.__all__ if callable(getattr(mp, name)))

# "Args:" (or "Keyword Args:") then indented lines; each argument starts at four
# spaces: "name: text" or "name (type): text".
_ARGS_SECTION = re.compile(r"^(?:Keyword )?Args:\n((?:[ ]{4}.*\n|\n)+)", re.MULTILINE)
_ARG_NAME = re.compile(r"^[ ]{4}\**(\w+)(?: \([^)]*\))?:", re.MULTILINE)


def documented_arguments(doc: str) -> list[str]:
    """The argument names of Google-style ``Args:`` sections (none without one)."""
    return [name for section in _ARGS_SECTION.finditer(doc + "\n") for name in _ARG_NAME.findall(section.group(1))]


def accepted_arguments(obj: Any) -> set[str]:
    """What a caller may pass by name: the parameters, or the decorator's options."""
    if obj is mp.parallel:
        return set(OPTION_NAMES)
    parameters = inspect.signature(obj).parameters.values()
    return {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def test_documented_arguments_reads_a_google_style_section() -> None:
    doc = "Summary.\n\nArgs:\n    first: one.\n        more of it.\n    second (int): two.\n\nRaises:\n    E: x\n"
    assert documented_arguments(doc) == ["first", "second"]
    assert documented_arguments("S.\n\nKeyword Args:\n    third (str | None): three.\n") == ["third"]
    assert documented_arguments("No section here.") == []


@pytest.mark.parametrize("name", PUBLIC_CALLABLES)
def test_every_public_callable_has_a_docstring(name: str) -> None:
    doc = inspect.getdoc(getattr(mp, name))
    assert doc and len(doc.split()) >= 4, f"mp.{name} has no docstring worth the name: {doc!r}"


WITH_ARGS_SECTION = [name for name in PUBLIC_CALLABLES if documented_arguments(inspect.getdoc(getattr(mp, name)) or "")]


def test_the_main_entry_points_document_their_arguments() -> None:
    assert {"parallel", "imap", "gather", "configure", "shutdown"} <= set(WITH_ARGS_SECTION)


@pytest.mark.parametrize("name", WITH_ARGS_SECTION)
def test_documented_arguments_are_real_ones(name: str) -> None:
    obj = getattr(mp, name)
    documented = set(documented_arguments(inspect.getdoc(obj) or ""))
    accepted = accepted_arguments(obj)
    assert documented <= accepted, f"mp.{name} documents {documented - accepted}, which it does not take"
    assert accepted <= documented, f"mp.{name} does not document {accepted - documented}"


@pytest.mark.parametrize("function", [mp.parallel, mp.configure], ids=lambda f: f.__name__)
def test_backend_lists_name_every_backend(function: Any) -> None:
    doc = inspect.getdoc(function) or ""
    missing = [name for name in BACKEND_NAMES if f'``"{name}"``' not in doc]
    assert not missing, f"{function.__name__}'s docstring does not name the backend(s) {missing}"


def test_the_old_decorator_names_are_the_decorator() -> None:
    assert mp.parallel_fast is mp.parallel_pool is mp.parallel_priority is mp.parallel


# "Raises:" then indented lines; each entry starts at four spaces: "Name: text"
# or "Name, Other: text".
_RAISES_SECTION = re.compile(r"^Raises:\n((?:[ ]{4}.*\n|\n)+)", re.MULTILINE)


def documented_exceptions(doc: str) -> set[str]:
    """The exception names that start the entries of a Google-style ``Raises:`` section."""
    names: set[str] = set()
    for section in _RAISES_SECTION.finditer(doc + "\n"):
        for entry in re.findall(r"^[ ]{4}(\S[^:\n]*):", section.group(1), re.MULTILINE):
            names.update(name.strip() for name in entry.split(","))
    return names


def test_documented_exceptions_reads_a_google_style_section() -> None:
    doc = "Summary.\n\nRaises:\n    TypeError, ValueError: bad input.\n        more of it.\n    TaskTimeoutError: late.\n"
    assert documented_exceptions(doc) == {"TypeError", "ValueError", "TaskTimeoutError"}
    assert documented_exceptions("No section here.") == set()


async def _gather_async(*args: Any, **kwargs: Any) -> list[Any]:
    return await mp.gather_async(*args, **kwargs)


# What a caller gets wrong first, with the public name whose docstring must say so.
BAD_CALLS = [
    pytest.param(mp.AsyncHandle.get, lambda h: h.get(timeout=-1), ValueError, id="get-negative-timeout"),
    pytest.param(mp.AsyncHandle.get, lambda h: h.get(timeout="soon"), TypeError, id="get-timeout-not-a-number"),
    pytest.param(mp.AsyncHandle.exception, lambda h: h.exception(timeout=-1), ValueError, id="exception-negative-timeout"),
    pytest.param(mp.AsyncHandle.exception, lambda h: h.exception(timeout="soon"), TypeError, id="exception-timeout-not-a-number"),
    pytest.param(mp.AsyncHandle.exception, lambda h: h.exception(timeout=0), mp.TaskTimeoutError, id="exception-gives-up"),
    pytest.param(mp.AsyncHandle.set_metadata, lambda h: h.set_metadata(17, "row"), TypeError, id="set_metadata-key-not-a-str"),
    pytest.param(mp.as_completed, lambda h: mp.as_completed([h], timeout=-1), ValueError, id="as_completed-negative-timeout"),
    pytest.param(mp.gather_async, lambda h: asyncio.run(_gather_async([h], on_error="ignore")), ValueError, id="gather_async-on_error"),
    pytest.param(mp.gather_async, lambda h: asyncio.run(_gather_async([h, 5])), TypeError, id="gather_async-not-a-handle"),
    pytest.param(mp.ParallelContext, lambda h: mp.ParallelContext(timeout=-1), ValueError, id="ParallelContext-negative-timeout"),
    pytest.param(mp.ParallelContext, lambda h: mp.ParallelContext(max_concurrent="4"), TypeError, id="ParallelContext-max_concurrent"),
]


@pytest.mark.parametrize(("documented", "call", "raised"), BAD_CALLS)
def test_the_errors_of_bad_calls_are_in_the_raises_section(
    documented: Any, call: Callable[[mp.AsyncHandle[Any]], object], raised: type[BaseException]
) -> None:
    release = threading.Event()
    handle = mp.parallel(release.wait)(30)  # unfinished while the call is made
    try:
        with pytest.raises(raised):
            call(handle)
    finally:
        release.set()
        handle.get(timeout=30)
    names = documented_exceptions(inspect.getdoc(documented) or "")
    assert raised.__name__ in names, f"{documented.__qualname__} raises {raised.__name__}, its Raises section names {sorted(names)}"


@pytest.mark.parametrize("method", ["get", "result", "wait", "exception"])
def test_a_wait_that_runs_a_queued_task_on_the_main_thread_documents_its_system_exit(method: str, gate: threading.Event) -> None:
    # Queued behind a task that holds the pool's one thread, the task runs inline
    # in the wait, on the main thread, where its SystemExit is taken for one meant
    # for the program (a signal handler's sys.exit) and raised again: even by
    # wait(), which otherwise never raises the task's error.
    assert threading.current_thread() is threading.main_thread()
    mp.configure_thread_pool(num_threads=1)
    blocker = mp.parallel(gate.wait)(30)
    handle = mp.parallel(sys.exit)(4)
    try:
        with pytest.raises(SystemExit):
            getattr(handle, method)()
    finally:
        gate.set()
        blocker.get(timeout=30)
    documented = getattr(mp.AsyncHandle, "get" if method == "result" else method)
    names = documented_exceptions(inspect.getdoc(documented) or "")
    assert "SystemExit" in names, f"AsyncHandle.{method} raises SystemExit here, its Raises section names {sorted(names)}"


def _system_exit_entry(method: str) -> str:
    """The text of the ``KeyboardInterrupt, SystemExit`` entry of ``AsyncHandle.<method>``'s Raises section."""
    doc = inspect.getdoc(getattr(mp.AsyncHandle, method)) or ""
    found = re.search(r"^[ ]{4}KeyboardInterrupt, SystemExit:((?:.*\n?)(?:[ ]{8}.*\n?)*)", doc, re.MULTILINE)
    assert found, f"AsyncHandle.{method} documents no KeyboardInterrupt, SystemExit entry"
    return " ".join(found.group(1).split())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["wait", "exception"])
@pytest.mark.parametrize("where", ["process", "timeout of its own"])
def test_a_wait_that_does_not_run_the_task_here_does_not_raise_its_system_exit(
    method: str, where: str, gate: threading.Event
) -> None:
    # Nothing is run inline for a process task (it is sent to a worker), nor for a
    # task with a timeout of its own (run inline, its deadline could not end the
    # wait): the worker ran it, and wait() returns, exception() returns the
    # SystemExit, as for any error. The docstrings said "a task still queued runs
    # here", of every task, and a user wrapping wait() for the SystemExit of a CLI
    # run as a process task met none.
    assert threading.current_thread() is threading.main_thread()
    if where == "process":
        mp.configure_process_pool(num_workers=1)
        blocker = mp.parallel(backend="process")(abs)(-1)  # the one worker busy: queued or not, never run here
        handle = mp.parallel(backend="process")(sys.exit)(4)
    else:
        mp.configure_thread_pool(num_threads=1)
        blocker = mp.parallel(gate.wait)(30)
        handle = mp.parallel(timeout=30)(sys.exit)(4)
        threading.Timer(0.2, gate.set).start()  # the worker frees up only after the wait began
    try:
        outcome = getattr(handle, method)()
    finally:
        gate.set()
        blocker.get(timeout=30)
    assert outcome is True if method == "wait" else isinstance(outcome, SystemExit)
    entry = _system_exit_entry(method)
    assert "thread backend" in entry and "timeout of its own" in entry, entry
