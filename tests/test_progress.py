"""Progress for batches: a tqdm bar (``progress=True``) or a callable ``(done, total)``.

Bars are read from captured stderr; that a bar was closed is read from tqdm's
registry of open bars (``tqdm._instances``). Task-side progress
(``report_progress``) is covered by the handle tests; one check here that it
reaches ``on_progress`` while the handles are gathered.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar
from unittest import mock

import pytest

import makeparallel as mp

tqdm_module = pytest.importorskip("tqdm")
tqdm = tqdm_module.tqdm

BACKENDS = ["thread", "sync"]
INSTALL_HINT = 'pip install "makeparallel[progress]"'


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def no_tqdm_monitor_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """tqdm starts a daemon monitor thread with its first bar; the leak check
    (conftest) would report it, and it is tqdm's, not ours: keep it off."""
    monkeypatch.setattr(tqdm, "monitor_interval", 0)


def open_bars() -> set[Any]:
    """The tqdm bars not yet closed."""
    return set(getattr(tqdm, "_instances", ()))


@pytest.fixture
def no_bar_left_open() -> Iterator[None]:
    """Fail if a test leaves a tqdm bar of its own open."""
    before = open_bars()
    yield
    assert open_bars() - before == set(), "a progress bar was left open"


def double(x: int) -> int:
    return 2 * x


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x


class Recorder:
    """A progress callable that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))

    def check_counts_up_to(self, total: int | None, last_done: int) -> None:
        assert self.calls, "the progress callable was never called"
        dones = [done for done, _ in self.calls]
        assert dones == sorted(set(dones)), f"done must only increase: {dones}"
        assert all(t == total for _, t in self.calls)
        assert dones[-1] == last_done
        assert dones[0] > 0


# -- tqdm bars ---------------------------------------------------------------------------------


def test_parallel_map_draws_a_bar_to_100_percent(
    backend: str, capsys: pytest.CaptureFixture[str], no_bar_left_open: None
) -> None:
    assert mp.parallel_map(double, range(50), progress=True, backend=backend) == [2 * x for x in range(50)]
    err = capsys.readouterr().err
    assert "50/50" in err
    assert "100%" in err


def test_imap_draws_a_bar_to_100_percent(
    backend: str, capsys: pytest.CaptureFixture[str], no_bar_left_open: None
) -> None:
    assert list(mp.imap(double, list(range(30)), progress=True, backend=backend)) == [2 * x for x in range(30)]
    err = capsys.readouterr().err
    assert "30/30" in err
    assert "100%" in err


def test_a_bar_over_a_generator_counts_items(
    capsys: pytest.CaptureFixture[str], no_bar_left_open: None
) -> None:
    assert len(mp.parallel_map(double, (x for x in range(40)), progress=True)) == 40
    err = capsys.readouterr().err
    assert "40item" in err  # no total to show, so the count and no percentage
    assert "%" not in err


def test_gather_draws_a_bar_to_100_percent(
    backend: str, capsys: pytest.CaptureFixture[str], no_bar_left_open: None
) -> None:
    work = mp.parallel(backend=backend)(double)
    assert mp.gather([work(i) for i in range(12)], progress=True) == [2 * i for i in range(12)]
    err = capsys.readouterr().err
    assert "12/12" in err
    assert "100%" in err


def test_no_bar_without_progress(capsys: pytest.CaptureFixture[str]) -> None:
    mp.parallel_map(double, range(20))
    list(mp.imap(double, range(20), progress=False))
    mp.gather([mp.parallel(double)(1)], progress=None)
    assert capsys.readouterr().err == ""


def test_the_bar_closes_when_the_map_fails(
    backend: str, capsys: pytest.CaptureFixture[str], no_bar_left_open: None
) -> None:
    with pytest.raises(ValueError, match="seven"):
        mp.parallel_map(fail_on_seven, range(20), chunksize=1, progress=True, backend=backend)
    assert open_bars() == set()
    assert "/20" in capsys.readouterr().err  # the failed bar was printed, then closed
    # and a new bar can be drawn afterwards
    assert mp.parallel_map(double, range(5), progress=True, backend=backend) == [0, 2, 4, 6, 8]
    assert "5/5" in capsys.readouterr().err


def test_the_bar_closes_when_gather_fails(
    backend: str, capsys: pytest.CaptureFixture[str], no_bar_left_open: None
) -> None:
    work = mp.parallel(backend=backend)(fail_on_seven)
    with pytest.raises(ValueError, match="seven"):
        mp.gather([work(i) for i in range(10)], progress=True)
    assert open_bars() == set()
    assert "/10" in capsys.readouterr().err


def test_the_bar_closes_when_imap_is_closed_early(
    capsys: pytest.CaptureFixture[str], no_bar_left_open: None
) -> None:
    iterator = mp.imap(double, range(1000), progress=True, chunksize=1)
    assert next(iterator) == 0
    iterator.close()
    assert open_bars() == set()
    assert "/1000" in capsys.readouterr().err


@pytest.mark.timeout(20)
def test_the_bar_closes_when_the_map_times_out(
    gate: threading.Event, capsys: pytest.CaptureFixture[str], no_bar_left_open: None
) -> None:
    def held(x: int) -> int:
        if x == 2:
            assert gate.wait(10)
        return x

    with pytest.raises(mp.TaskTimeoutError):
        mp.parallel_map(held, range(5), chunksize=1, timeout=0.2, progress=True, backend="thread")
    assert open_bars() == set()
    gate.set()
    assert "/5" in capsys.readouterr().err


# -- progress callables ---------------------------------------------------------------------------


def test_parallel_map_calls_the_callable_up_to_the_total(backend: str) -> None:
    recorder = Recorder()
    mp.parallel_map(double, range(100), progress=recorder, backend=backend)
    recorder.check_counts_up_to(total=100, last_done=100)


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_imap_calls_the_callable_up_to_the_total(backend: str, chunksize: int | None) -> None:
    recorder = Recorder()
    list(mp.imap(double, list(range(50)), chunksize=chunksize, ordered=False, progress=recorder, backend=backend))
    recorder.check_counts_up_to(total=50, last_done=50)


def test_a_generator_has_no_total(backend: str) -> None:
    recorder = Recorder()
    mp.parallel_map(double, (x for x in range(64)), progress=recorder, backend=backend)
    recorder.check_counts_up_to(total=None, last_done=64)
    recorder = Recorder()
    list(mp.imap(double, (x for x in range(10)), progress=recorder, backend=backend))
    recorder.check_counts_up_to(total=None, last_done=10)


def test_gather_calls_the_callable_once_per_handle(backend: str) -> None:
    recorder = Recorder()
    work = mp.parallel(backend=backend)(double)
    mp.gather([work(i) for i in range(6)], progress=recorder)
    assert recorder.calls == [(k, 6) for k in range(1, 7)]
    recorder = Recorder()
    handle = work(3)
    assert mp.gather([handle, work(4), handle], progress=recorder) == [6, 8, 6]  # one task listed twice
    assert recorder.calls == [(k, 3) for k in range(1, 4)]


def test_failed_items_count_as_done(backend: str) -> None:
    recorder = Recorder()
    assert len(mp.parallel_map(fail_on_seven, range(20), on_error="skip", progress=recorder, backend=backend)) == 19
    recorder.check_counts_up_to(total=20, last_done=20)
    recorder = Recorder()
    work = mp.parallel(backend=backend)(fail_on_seven)
    mp.gather([work(i) for i in range(10)], on_error="none", progress=recorder)
    recorder.check_counts_up_to(total=10, last_done=10)


def test_a_failing_item_calls_the_callable_no_more_than_the_items_done(backend: str) -> None:
    # Items 0 to 6 end (chunks of one item, in order), item 7 fails: 7 calls, each with one more.
    recorder = Recorder()
    with pytest.raises(ValueError, match="seven"):
        mp.parallel_map(fail_on_seven, range(20), chunksize=1, max_in_flight=1, progress=recorder, backend=backend)
    recorder.check_counts_up_to(total=20, last_done=7)


class CallableError(Exception):
    pass


def test_a_callable_that_raises_is_called_once_and_its_error_raised_once(backend: str) -> None:
    calls: list[int] = []

    def broken(done: int, total: int | None) -> None:
        calls.append(done)
        raise CallableError(f"display broke at {done}")

    for run in (lambda: mp.parallel_map(double, range(20), progress=broken, backend=backend),
                lambda: list(mp.imap(double, range(20), progress=broken, backend=backend))):
        calls.clear()
        with pytest.raises(CallableError) as raised:
            run()
        assert len(calls) == 1, f"called again after it raised: {calls}"
        assert raised.value.__context__ is None, "the error was raised while handling a first copy of itself"


def test_the_callable_runs_on_the_collecting_thread() -> None:
    caller = threading.get_ident()
    idents: set[int] = set()
    mp.parallel_map(double, range(200), progress=lambda done, total: idents.add(threading.get_ident()))
    assert idents == {caller}


# -- missing tqdm, bad options ---------------------------------------------------------------------


def assert_refused_at_each_call(
    option: Any, pattern: str, error: type[Exception] = TypeError, imap_items: Iterable[int] | None = None
) -> None:
    """``parallel_map``, ``imap`` (at the call, before iterating) and ``gather`` each refuse ``progress=option``.

    Each raises ``error`` matching ``pattern``; the task gathered still gives its result.
    """
    with pytest.raises(error, match=pattern):
        mp.parallel_map(double, range(5), progress=option)
    with pytest.raises(error, match=pattern):
        mp.imap(double, range(5) if imap_items is None else imap_items, progress=option)
    handle = mp.parallel(double)(3)
    with pytest.raises(error, match=pattern):
        mp.gather([handle], progress=option)
    assert handle.get(5) == 6


def test_a_bar_without_tqdm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("tqdm", "tqdm.auto", "tqdm.std"):  # importing them now raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    assert_refused_at_each_call(True, r'pip install "makeparallel\[progress\]"', ImportError)
    # a callable needs no tqdm
    recorder = Recorder()
    assert mp.parallel_map(double, range(5), progress=recorder) == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("option", ["yes", 1, 0.5, object()])
def test_a_bad_progress_option_is_a_type_error(option: Any) -> None:
    assert_refused_at_each_call(option, "progress")


async def async_display(done: int, total: int | None) -> None:
    """An ``async def`` display: called, it would only make a coroutine that nobody awaits."""


async def async_generator_display(done: int, total: int | None) -> Any:
    """An ``async def`` display that yields: called, it would only make an async generator that nobody iterates."""
    yield done


class AsyncDisplay:
    """An object whose ``__call__`` is ``async def``: called, it too only makes a coroutine."""

    async def __call__(self, *report: Any) -> None:
        """Nothing: never awaited."""

    async def show(self, *report: Any) -> None:
        """Nothing: never awaited."""


async def async_listener(fraction: float) -> None:
    """An ``async def`` progress listener."""


# Every way of giving a callable that makes a coroutine when called, and what its error names.
ASYNC_CALLABLES = [
    pytest.param(async_display, "async_display", id="async-def"),
    pytest.param(functools.partial(async_display), "async_display", id="partial-of-async-def"),
    pytest.param(AsyncDisplay(), "AsyncDisplay", id="async-call"),
    pytest.param(functools.partial(AsyncDisplay()), "AsyncDisplay", id="partial-of-async-call"),
    pytest.param(functools.partial(functools.partial(AsyncDisplay())), "AsyncDisplay", id="partial-of-partial"),
    pytest.param(AsyncDisplay().show, "AsyncDisplay.show", id="async-method"),
    pytest.param(mock.AsyncMock(), "AsyncMock", id="AsyncMock"),
]


class Display:
    """A class: called, it would only make an instance each time (as ``progress=tqdm`` would)."""

    def __init__(self, done: int, total: int | None) -> None:
        self.done = done


@pytest.mark.parametrize(
    ("option", "pattern"),
    [
        (tqdm, r"progress=.*tqdm.*is a class.*progress=True"),
        (Display, r"progress=.*Display.*is a class.*progress=True"),
        (functools.partial(tqdm, desc="rows"), r"progress=.*is a class.*a tqdm object.*progress=True"),
        (functools.partial(Display), r"progress=.*is a class.*a Display object.*progress=True"),
        (async_display, r"progress=.*async_display.*async function.*plain function"),
        (async_generator_display, r"progress=.*async_generator_display.*async generator function.*plain function"),
    ],
)
def test_a_progress_callable_that_is_no_display_is_a_type_error_at_the_call(option: Any, pattern: str) -> None:
    # A class is callable, and an async function too: each would be called after every chunk, once
    # the work was done, to make a bar (an instance) or a coroutine per chunk, and nothing shown.
    assert_refused_at_each_call(option, pattern)


class Shows(type):
    """A metaclass whose call shows the report: its classes make no object when called."""

    reports: ClassVar[list[tuple[int, int | None]]] = []

    def __call__(cls, done: int, total: int | None) -> None:
        Shows.reports.append((done, total))


class Shown(metaclass=Shows):
    """A class given as progress=: its metaclass's ``__call__`` runs after each chunk."""


def test_a_class_whose_metaclass_handles_its_call_is_a_progress_display(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only a class whose call makes an object (tqdm's) is refused: a metaclass's own __call__ shows.
    monkeypatch.setattr(Shows, "reports", [])
    assert mp.parallel_map(double, range(5), progress=Shown, backend="sync") == [0, 2, 4, 6, 8]
    assert Shows.reports and Shows.reports[-1] == (5, 5)


@pytest.mark.parametrize(("option", "named"), ASYNC_CALLABLES)
def test_an_async_progress_callable_is_a_type_error_at_the_call(option: Any, named: str) -> None:
    pattern = rf"progress=.*{named}.* is an async function.*plain function"
    assert_refused_at_each_call(option, pattern, imap_items=numbers(5))


def generator_display(done: int, total: int | None) -> Iterator[int]:
    """A display that yields: called, it would only make a generator, none of its body run."""
    yield done


class GeneratorDisplay:
    """An object whose ``__call__`` yields: called, it too only makes a generator."""

    def __call__(self, done: int, total: int | None) -> Iterator[int]:
        yield done

    def show(self, done: int, total: int | None) -> Iterator[int]:
        yield done


# Every way of giving a callable that makes a generator when called, and what its error names.
GENERATOR_CALLABLES = [
    pytest.param(generator_display, "generator_display", id="generator-function"),
    pytest.param(functools.partial(generator_display), "generator_display", id="partial-of-generator-function"),
    pytest.param(GeneratorDisplay(), "GeneratorDisplay", id="generator-call"),
    pytest.param(functools.partial(functools.partial(GeneratorDisplay())), "GeneratorDisplay", id="partial-of-partial"),
    pytest.param(GeneratorDisplay().show, "GeneratorDisplay.show", id="generator-method"),
]


@pytest.mark.parametrize(("option", "named"), GENERATOR_CALLABLES)
def test_a_generator_progress_callable_is_a_type_error_before_any_task_runs(option: Any, named: str) -> None:
    # Called after each chunk, it made a generator that nobody iterates: the map ran to its end and
    # showed nothing, with no error and no warning. Refused at the call now, as an async one is.
    pattern = (
        rf"progress=.*{named}.* is a generator function: .*a generator that nobody iterates, and show "
        r"nothing\. Pass a plain function\(done, total\).*progress=True, or a dict of tqdm options"
    )
    assert_refused_at_each_call(option, pattern, imap_items=numbers(5))
    ran: list[int] = []
    with pytest.raises(TypeError, match=pattern):
        mp.parallel_map(ran.append, range(5), progress=option)
    assert ran == []


class CountsOnly:
    """A display whose ``__call__`` and method take the count alone: the map calls them with (done, total)."""

    def __call__(self, done: int) -> None:
        """Never called: refused at the map's call."""

    def show(self, done: int) -> None:
        """Never called: refused at the map's call."""


def three_places(done: int, total: int | None, out: list[int]) -> None:
    """A display that needs a third argument, unless a partial gives it."""
    out.append(done)


# Every way of giving a display that cannot take (done, total), and why inspect says it cannot.
UNFITTING_DISPLAYS = [
    pytest.param(lambda done: None, "too many positional arguments", id="one-argument"),
    pytest.param(three_places, "missing a required argument: 'out'", id="three-arguments"),
    pytest.param(lambda done, total, *, style: None, "missing a required (keyword-only )?argument: 'style'", id="keyword-only"),
    pytest.param(CountsOnly(), "too many positional arguments", id="object-call"),
    pytest.param(CountsOnly().show, "too many positional arguments", id="method"),
    pytest.param(functools.partial(three_places, 1, None), "too many positional arguments", id="partial"),
]


@pytest.mark.parametrize(("option", "why"), UNFITTING_DISPLAYS)
def test_a_progress_callable_that_cannot_take_done_and_total_is_a_type_error_before_any_task_runs(
    option: Any, why: str
) -> None:
    # Called as option(done, total) after the first chunk, it failed there, deep in the map, its work done.
    pattern = (
        r"progress must take 2 positional arguments \(done, total\), as it is called after each chunk of a map, "
        rf"or each task gathered; .* cannot: {why}\. Pass a function of \(done, total\)"
    )
    assert_refused_at_each_call(option, pattern)
    ran: list[int] = []
    with pytest.raises(TypeError, match=pattern):
        mp.parallel_map(ran.append, range(5), progress=option)
    assert ran == []


@pytest.mark.parametrize(
    "option",
    [
        pytest.param(lambda *report: None, id="varargs"),
        pytest.param(lambda done, total=None, scale=1: None, id="defaults"),
        pytest.param(functools.partial(three_places, out=[]), id="partial"),
        pytest.param(print, id="builtin"),  # (one with no signature to read is taken: it may fit)
    ],
)
def test_a_progress_callable_that_takes_done_and_total_is_called(option: Any) -> None:
    assert mp.parallel_map(double, range(3), progress=option) == [0, 2, 4]


def test_a_decorated_progress_callable_is_read_by_its_wrapper() -> None:
    # Read through __wrapped__, show(style, done, total) seemed to need three arguments: it was refused.
    shown: list[tuple[str, int, int | None]] = []

    def styled(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)  # (copies fn's signature, the one the map does not call)
        def wrapper(*report: Any) -> None:
            fn("plain", *report)

        return wrapper

    @styled
    def show(style: str, done: int, total: int | None) -> None:
        shown.append((style, done, total))

    assert mp.parallel_map(double, range(3), chunksize=3, progress=show) == [0, 2, 4]
    assert shown == [("plain", 3, 3)]


# -- task-side progress ------------------------------------------------------------------------------


@pytest.mark.parametrize(("listener", "named"), [*ASYNC_CALLABLES, pytest.param(async_listener, "async_listener")])
@pytest.mark.parametrize("reported", [False, True], ids=["before-a-report", "after-a-report"])
def test_an_async_on_progress_listener_is_a_type_error_and_not_kept(
    backend: str, gate: threading.Event, listener: Any, named: str, reported: bool
) -> None:
    # Called at each report (or at once, with a report that came already), an async listener would only
    # make a coroutine that nobody awaits: nothing shown, and a RuntimeWarning far from the call.
    half_way = threading.Event()
    recorder: list[float] = []

    @mp.parallel(backend=backend)
    def stepped() -> str:
        mp.report_progress(0.5)
        half_way.set()
        assert backend == "sync" or gate.wait(5)
        mp.report_progress(1.0)
        return "done"

    if backend == "sync":
        gate.set()
    handle = stepped()
    if reported:
        assert half_way.wait(5)
    with pytest.raises(TypeError, match=rf"on_progress\(.*{named}.*\) is an async function.*plain function"):
        handle.on_progress(listener)
    handle.on_progress(recorder.append)  # a plain one still is, and sees every report from here
    gate.set()
    assert handle.get(5) == "done"
    assert recorder[-1] == 1.0


def plain_listener(fraction: float) -> None:
    """A plain ``on_progress`` listener, for a mock to take the shape of."""


def plain_display(done: int, total: int | None) -> None:
    """A plain ``progress=`` display, for a mock to take the shape of."""


# Mocks pass for what they stand in for: one made with spec= of a function claims to be a function
# (isinstance) while its __code__ is a mock too, which inspect.iscoroutinefunction cannot read.
PLAIN_MOCKS = [
    pytest.param(lambda shape: mock.Mock(), id="Mock"),
    pytest.param(lambda shape: mock.MagicMock(), id="MagicMock"),
    pytest.param(lambda shape: mock.Mock(spec=shape), id="Mock-spec"),
    pytest.param(lambda shape: mock.MagicMock(spec=shape), id="MagicMock-spec"),
    pytest.param(lambda shape: mock.Mock(wraps=shape), id="Mock-wraps"),
    pytest.param(lambda shape: mock.create_autospec(shape), id="autospec"),
]


@pytest.mark.parametrize("make", PLAIN_MOCKS)
def test_a_mock_of_a_plain_callback_is_taken_and_called(make: Callable[[Any], Any]) -> None:
    listener = make(plain_listener)

    @mp.parallel(backend="sync")
    def stepped() -> str:
        mp.report_progress(0.5)
        return "done"

    handle = stepped()
    assert handle.on_progress(listener) is handle  # it succeeded already: called at once, as get_progress() says
    listener.assert_called_once_with(1.0)
    display = make(plain_display)
    assert mp.parallel_map(double, range(3), progress=display) == [0, 2, 4]
    assert display.call_args == mock.call(3, 3)


def test_report_progress_reaches_on_progress_while_gathering(gate: threading.Event) -> None:
    lock = threading.Lock()
    seen: dict[int, list[float]] = {}

    @mp.parallel(backend="thread")
    def stepped(i: int) -> int:
        mp.report_progress(0.5, "half way")
        assert gate.wait(5)
        mp.report_progress(1.0)
        return i

    def listener(i: int) -> Callable[[float], None]:
        def on_progress(fraction: float) -> None:
            with lock:
                seen.setdefault(i, []).append(fraction)

        return on_progress

    handles = [stepped(i) for i in range(3)]
    for i, handle in enumerate(handles):
        handle.on_progress(listener(i))
    gate.set()
    assert mp.gather(handles) == [0, 1, 2]
    with lock:
        assert seen == {0: [0.5, 1.0], 1: [0.5, 1.0], 2: [0.5, 1.0]}


# -- tqdm.auto, tqdm options, logging above the bar -----------------------------------------------


class RecordingTqdm(tqdm):  # type: ignore[misc, valid-type]
    """A tqdm bar that remembers the options of each bar made."""

    made: list[dict[str, Any]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        RecordingTqdm.made.append(kwargs)
        super().__init__(*args, **kwargs)


@pytest.fixture
def recording_auto_tqdm(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Stand in for ``tqdm.auto.tqdm`` (what picks a widget in Jupyter, text elsewhere)."""
    import tqdm.auto

    RecordingTqdm.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingTqdm)
    return RecordingTqdm.made


def test_bars_come_from_tqdm_auto(recording_auto_tqdm: list[dict[str, Any]], no_bar_left_open: None) -> None:
    mp.parallel_map(double, range(10), progress=True)
    list(mp.imap(double, range(10), progress=True))
    mp.gather([mp.parallel(double)(1)], progress=True)
    assert [(made["total"], made["unit"]) for made in recording_auto_tqdm] == [(10, "item"), (10, "item"), (1, "item")]


def test_a_dict_of_tqdm_options_shapes_the_bar(
    backend: str,
    recording_auto_tqdm: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    no_bar_left_open: None,
) -> None:
    options = {"desc": "doubling", "unit": "number", "leave": True}
    assert mp.parallel_map(double, range(30), progress=options, backend=backend) == [2 * x for x in range(30)]
    assert recording_auto_tqdm == [{"total": 30, "desc": "doubling", "unit": "number", "leave": True}]
    err = capsys.readouterr().err
    assert "doubling" in err and "30/30" in err and "number" in err
    assert options == {"desc": "doubling", "unit": "number", "leave": True}  # the caller's dict is untouched
    work = mp.parallel(backend=backend)(double)
    assert mp.gather([work(i) for i in range(4)], progress={"desc": "collecting"}) == [0, 2, 4, 6]
    assert "collecting" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"colour_of_sky": "blue"}, "unknown progress option 'colour_of_sky'"),
        ({"iterable": [1]}, "may not set iterable"),
        ({"total": "5"}, r"progress total must be an int >= 0 or None, got '5'"),
        ({"total": 5.0}, r"progress total must be an int >= 0 or None, got 5\.0"),
        ({"total": True}, r"progress total must be an int >= 0 or None, got True"),
    ],
)
def test_bad_tqdm_options_are_a_type_error_at_the_call(options: dict[str, Any], pattern: str) -> None:
    assert_refused_at_each_call(options, pattern)


def numbers(count: int) -> Iterator[int]:
    """An input with no length, as a generator is."""
    yield from range(count)


def test_a_total_gives_a_bar_over_a_generator_its_length(
    backend: str,
    recording_auto_tqdm: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    no_bar_left_open: None,
) -> None:
    # A generator has no length for the map to count: a total of yours gives the bar its end and ETA.
    options = {"desc": "rows", "total": 30}
    assert mp.parallel_map(double, numbers(30), progress=options, backend=backend) == [2 * x for x in range(30)]
    assert list(mp.imap(double, numbers(30), progress=options, backend=backend)) == [2 * x for x in range(30)]
    assert [made["total"] for made in recording_auto_tqdm] == [30, 30]
    err = capsys.readouterr().err
    assert err.count("30/30") >= 2 and "100%" in err
    assert options == {"desc": "rows", "total": 30}  # the caller's dict is untouched


def test_a_total_over_a_generator_reaches_imap_iterated_with_async_for(
    recording_auto_tqdm: list[dict[str, Any]], no_bar_left_open: None
) -> None:
    import asyncio

    async def collect() -> list[int]:
        return [x async for x in mp.imap(double, numbers(8), progress={"total": 8})]

    assert asyncio.run(collect()) == [2 * x for x in range(8)]
    assert [made["total"] for made in recording_auto_tqdm] == [8]


def _imap_with_async_for(items: list[int], progress: Any) -> list[int]:
    import asyncio

    async def collect() -> list[int]:
        return [x async for x in mp.imap(double, items, progress=progress)]

    return asyncio.run(collect())


EMPTY_BATCHES: dict[str, Callable[[Any], list[Any]]] = {
    "gather": lambda progress: mp.gather([], progress=progress),
    "parallel_map": lambda progress: mp.parallel_map(double, [], progress=progress),
    "parallel_map unordered": lambda progress: mp.parallel_map(double, [], ordered=False, progress=progress),
    "imap": lambda progress: list(mp.imap(double, [], progress=progress)),
    "imap with async for": lambda progress: _imap_with_async_for([], progress),
}


@pytest.mark.parametrize("collector", list(EMPTY_BATCHES))
def test_every_collector_gives_an_empty_batch_a_bar_of_total_0(
    collector: str, recording_auto_tqdm: list[dict[str, Any]], no_bar_left_open: None
) -> None:
    # An empty input has a length, 0: the bar's total, in every collector alike (tqdm
    # draws a total of 0 as "0item", as it draws tqdm([])), and a callable is never called.
    assert EMPTY_BATCHES[collector](True) == []
    assert [made["total"] for made in recording_auto_tqdm] == [0]
    recorder = Recorder()
    assert EMPTY_BATCHES[collector](recorder) == []
    assert recorder.calls == []


def test_a_total_that_is_wrong_about_a_generator_changes_no_result(
    backend: str, recording_auto_tqdm: list[dict[str, Any]], no_bar_left_open: None
) -> None:
    # The total is the bar's, never taken for the input's length: the map reads the generator to its end.
    for total in (0, 1, 3, 1000):
        assert mp.parallel_map(double, numbers(50), progress={"total": total}, backend=backend) == [
            2 * x for x in range(50)
        ]
        assert list(mp.imap(double, numbers(50), chunksize=4, progress={"total": total}, backend=backend)) == [
            2 * x for x in range(50)
        ]
    assert [made["total"] for made in recording_auto_tqdm] == [0, 0, 1, 1, 3, 3, 1000, 1000]


def test_a_total_that_agrees_with_the_input_is_accepted(recording_auto_tqdm: list[dict[str, Any]]) -> None:
    assert mp.parallel_map(double, range(6), progress={"total": 6}) == [2 * x for x in range(6)]
    assert list(mp.imap(double, list(range(6)), progress={"total": 6})) == [2 * x for x in range(6)]
    assert mp.gather([mp.parallel(double)(i) for i in range(3)], progress={"total": 3}) == [0, 2, 4]
    assert mp.parallel_map(double, numbers(2), progress={"total": None}) == [0, 2]  # no length, none given
    assert [made["total"] for made in recording_auto_tqdm] == [6, 6, 3, None]


@pytest.mark.parametrize("total", [4, 7, None])
def test_a_total_that_disagrees_with_the_input_is_a_value_error_at_the_call(total: int | None) -> None:
    pattern = rf"progress total={total} disagrees with the 6 items .* has a length; a total is for an input with none"
    with pytest.raises(ValueError, match=pattern):
        mp.parallel_map(double, range(6), progress={"total": total})
    with pytest.raises(ValueError, match=pattern):
        mp.imap(double, list(range(6)), progress={"total": total})  # at the call, before iterating
    handles = [mp.parallel(double)(i) for i in range(6)]
    gathered = rf"progress total={total} disagrees with the 6 handles gathered"
    with pytest.raises(ValueError, match=gathered):
        mp.gather(handles, progress={"total": total})
    assert [handle.get(5) for handle in handles] == [2 * i for i in range(6)]


def test_a_negative_total_is_a_value_error_at_the_call() -> None:
    with pytest.raises(ValueError, match=r"progress total must be an int >= 0 or None, got -1"):
        mp.imap(double, numbers(3), progress={"total": -1})


@contextlib.contextmanager
def console_handler() -> Iterator[logging.Handler]:
    """A console handler on the root logger, as ``logging.basicConfig()`` adds one.

    Made inside the test, so that it writes to the stderr that capsys captures now.
    """
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def root_handlers_seen_by(seen: list[list[logging.Handler]]) -> Callable[[int], int]:
    def logged(x: int) -> int:
        seen.append(list(logging.getLogger().handlers))
        logging.getLogger("jobs").warning("working on %d", x)
        return x

    return logged


def test_redirect_logging_prints_log_lines_through_tqdm_while_the_bar_shows(
    backend: str, capsys: pytest.CaptureFixture[str], no_bar_left_open: None
) -> None:
    seen: list[list[logging.Handler]] = []
    options = {"desc": "logging", "redirect_logging": True}
    with console_handler() as console:
        assert mp.parallel_map(root_handlers_seen_by(seen), range(3), progress=options, backend=backend) == [0, 1, 2]
        assert len(seen) == 3
        for handlers in seen:  # while the bar showed, tqdm's handler stood in for the console one
            assert console not in handlers
            assert any(type(h).__name__ == "_TqdmLoggingHandler" for h in handlers), handlers
        assert console in logging.getLogger().handlers  # and it is back
    assert not any(type(h).__name__ == "_TqdmLoggingHandler" for h in logging.getLogger().handlers)
    err = capsys.readouterr().err
    assert all(f"working on {x}" in err for x in range(3)), err


def test_redirect_logging_ends_when_the_map_fails(no_bar_left_open: None) -> None:
    with console_handler() as console:
        with pytest.raises(ValueError, match="seven"):
            mp.parallel_map(fail_on_seven, range(10), progress={"redirect_logging": True})
        assert console in logging.getLogger().handlers


def test_logging_is_left_alone_by_default(backend: str) -> None:
    seen: list[list[logging.Handler]] = []
    with console_handler() as console:
        mp.parallel_map(root_handlers_seen_by(seen), range(3), progress={"desc": "plain"}, backend=backend)
        mp.parallel_map(root_handlers_seen_by(seen), range(3), progress=True, backend=backend)
    assert seen and all(console in handlers for handlers in seen)
