"""Inside a task: progress, task id, cooperative cancellation; and errors with their context."""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import traceback
from decimal import Decimal
from fractions import Fraction

import numpy
import pytest

import makeparallel as mp
from makeparallel.testing import wait_until_idle

BACKENDS = ["thread", "sync"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def notes_of(error: BaseException) -> list[str]:
    return list(getattr(error, "__notes__", []))


def library_notes(error: BaseException) -> list[str]:
    return [note for note in notes_of(error) if note.startswith("makeparallel:")]


# -- report_progress validation --------------------------------------------------------


@pytest.mark.parametrize("fraction", [math.nan, math.inf, -math.inf, -0.1, 1.1, -1, 2])
def test_progress_out_of_range_is_a_value_error(fraction: float) -> None:
    with pytest.raises(ValueError, match="progress"):
        mp.report_progress(fraction)


@pytest.mark.parametrize("fraction", ["0.5", True, False, None, [0.5], 1j])
def test_progress_of_wrong_type_is_a_type_error(fraction: object) -> None:
    with pytest.raises(TypeError, match="progress"):
        mp.report_progress(fraction)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fraction",
    [numpy.float32(0.5), numpy.float64(0.5), numpy.int64(1), Fraction(1, 2), numpy.array(0.5), numpy.array(1)],
    ids=["numpy.float32", "numpy.float64", "numpy.int64", "Fraction", "numpy 0-d float array", "numpy 0-d int array"],
)
def test_progress_of_any_real_number_type_is_taken_as_a_float(fraction: object, backend: str) -> None:
    """Real numbers that are not int or float subclasses (NumPy's float32, a Fraction) are numbers too."""
    go = threading.Event()

    @mp.parallel(backend=backend)
    def work() -> None:
        if backend != "sync":  # (which runs it at the call, before the callback is added)
            assert go.wait(10)
        mp.report_progress(fraction, "halfway")  # type: ignore[arg-type]
        # It ends short of done: a callback added once it ended gets the report, not a succeeded task's 1.0.
        raise LookupError("after the report")

    handle = work()
    received: list[float] = []
    handle.on_progress(received.append)  # on the sync backend: called at once with the report
    go.set()
    with pytest.raises(LookupError):
        handle.get(10)
    assert received == [float(fraction)]  # type: ignore[arg-type]
    assert type(received[0]) is float
    assert handle.get_progress_message() == "halfway"


@pytest.mark.parametrize(
    "fraction", [Decimal("0.5"), numpy.array([0.5]), numpy.array(True)], ids=["Decimal", "array", "numpy 0-d bool array"]
)
def test_progress_that_is_no_real_number_names_what_is_taken(fraction: object) -> None:
    with pytest.raises(TypeError, match=r"a real number .*int, float"):
        mp.report_progress(fraction)  # type: ignore[arg-type]


@pytest.mark.parametrize("fraction", [Fraction(10**400), Fraction(-(10**400), 3)], ids=["huge", "huge-negative"])
def test_progress_of_a_real_number_too_large_for_a_float_is_a_value_error(fraction: Fraction) -> None:
    # float() of it raised OverflowError, which report_progress does not say it raises.
    with pytest.raises(ValueError, match="between 0.0 and 1.0"):
        mp.report_progress(fraction)


@pytest.mark.parametrize("message", [1.5, b"bytes", ["step"]])  # an int is a task id
def test_progress_message_must_be_a_string(message: object) -> None:
    with pytest.raises(TypeError, match="message"):
        mp.report_progress(0.5, message)  # type: ignore[arg-type]


@pytest.mark.parametrize("fraction", [0, 0.0, 0.5, 1, 1.0])
def test_progress_outside_a_task_is_a_no_op(fraction: float) -> None:
    assert mp.report_progress(fraction) is None
    assert mp.report_progress(fraction, "a step") is None
    assert mp.report_progress(fraction, None) is None


def test_bad_progress_inside_a_task_fails_the_task(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        mp.report_progress(math.nan)

    with pytest.raises(ValueError, match="progress"):
        work().get(5)


# -- progress inside a task ------------------------------------------------------------


@pytest.mark.timeout(10)
def test_progress_is_visible_while_the_task_runs(gate: threading.Event) -> None:
    started = threading.Event()
    reported = threading.Event()
    go = threading.Event()

    @mp.parallel(backend="thread")
    def work() -> str:
        started.set()
        assert go.wait(5)
        mp.report_progress(0.25, "loading")
        reported.set()
        assert gate.wait(5)
        return "done"

    handle = work()
    assert started.wait(5)
    assert handle.get_progress() == 0.0  # nothing reported yet
    assert handle.get_progress_message() is None
    go.set()
    assert reported.wait(5)
    assert handle.get_progress() == 0.25
    assert handle.get_progress_message() == "loading"
    gate.set()
    assert handle.get(5) == "done"
    assert handle.get_progress() == 1.0


@pytest.mark.timeout(10)
def test_on_progress_receives_fractions_in_order() -> None:
    go = threading.Event()
    fractions = [0.0, 0.1, 0.5, 0.5, 0.9, 1.0]

    @mp.parallel(backend="thread")
    def work() -> None:
        assert go.wait(5)
        for fraction in fractions:
            mp.report_progress(fraction)

    handle = work()
    received: list[float] = []
    handle.on_progress(received.append)
    go.set()
    handle.get(5)
    assert received == fractions
    assert all(isinstance(value, float) for value in received)


def test_progress_after_success_is_one(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        mp.report_progress(0.3, "last step")

    handle = work()
    handle.get(5)
    assert handle.get_progress() == 1.0
    assert handle.get_progress_message() == "last step"


def test_progress_after_success_without_reports_is_one(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        pass

    handle = work()
    handle.get(5)
    assert handle.get_progress() == 1.0
    assert handle.get_progress_message() is None


def test_progress_after_failure_is_the_last_report(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        mp.report_progress(0.4, "parsing")
        raise ValueError("bad row")

    handle = work()
    handle.wait(5)
    assert handle.get_progress() == 0.4
    assert handle.get_progress_message() == "parsing"


def test_integer_progress_is_stored_as_float(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        mp.report_progress(0)
        raise ValueError("stopped at the start")

    handle = work()
    received: list[float] = []
    handle.wait(5)
    handle.on_progress(received.append)
    assert received == [0.0]
    assert isinstance(received[0], float)


# -- task id ---------------------------------------------------------------------------


def test_current_task_id_inside_a_task(backend: str) -> None:
    @mp.parallel(backend=backend)
    def whoami() -> int | None:
        return mp.get_current_task_id()

    handles = [whoami() for _ in range(10)]
    for handle in handles:
        assert handle.get(5) == handle.get_task_id()


def test_current_task_id_outside_a_task_is_none() -> None:
    assert mp.get_current_task_id() is None


def test_current_task_id_after_a_task_ran_here_is_none(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> int | None:
        return mp.get_current_task_id()

    handle = work()
    assert handle.get() is not None  # may have run on this thread
    assert mp.get_current_task_id() is None


def test_current_task_id_is_restored_after_a_nested_task(backend: str) -> None:
    @mp.parallel(backend=backend)
    def inner() -> int | None:
        return mp.get_current_task_id()

    @mp.parallel(backend=backend)
    def outer() -> tuple[int | None, int | None, int | None, int]:
        before = mp.get_current_task_id()
        child = inner()
        inner_id = child.get(5)
        after = mp.get_current_task_id()
        return before, inner_id, after, child.get_task_id()

    handle = outer()
    before, inner_id, after, child_id = handle.get(5)
    assert before == after == handle.get_task_id()
    assert inner_id == child_id != handle.get_task_id()


def test_current_task_id_in_a_failing_task_is_restored(backend: str) -> None:
    seen: list[int | None] = []

    @mp.parallel(backend=backend)
    def fail() -> None:
        seen.append(mp.get_current_task_id())
        raise RuntimeError("x")

    handle = fail()
    with pytest.raises(RuntimeError):
        handle.get(5)
    assert seen == [handle.get_task_id()]
    assert mp.get_current_task_id() is None


# -- check_cancelled -------------------------------------------------------------------


def test_check_cancelled_outside_a_task_does_nothing() -> None:
    assert mp.check_cancelled() is None


def test_check_cancelled_in_a_live_task_does_nothing(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> str:
        mp.check_cancelled()
        mp.check_cancelled()
        return "went on"

    assert work().get(5) == "went on"


@pytest.mark.timeout(10)
def test_check_cancelled_raises_once_the_running_task_is_cancelled(gate: threading.Event) -> None:
    started = threading.Event()
    finished = threading.Event()
    seen: list[BaseException] = []

    @mp.parallel(backend="thread", name="cancel-me")
    def work() -> str:
        started.set()
        try:
            assert gate.wait(5)
            mp.check_cancelled()
            return "not stopped"
        except BaseException as error:
            seen.append(error)
            raise
        finally:
            finished.set()

    handle = work()
    assert started.wait(5)
    assert handle.cancel() is True
    assert handle.cancelled() and handle.is_cancelled()
    assert handle.status == "cancelled"
    gate.set()
    assert finished.wait(5)
    assert len(seen) == 1
    assert isinstance(seen[0], mp.TaskCancelledError)
    # The handle keeps its own cancellation; the task's late outcome is dropped.
    with pytest.raises(mp.TaskCancelledError, match="cancel-me"):
        handle.get(5)
    assert handle.status == "cancelled"


def test_check_cancelled_raises_once_the_task_timed_out(
    backend: str, gate: threading.Event
) -> None:
    seen: list[BaseException] = []
    finished = threading.Event()

    @mp.parallel(backend=backend, timeout=0.05)
    def work() -> None:
        try:
            while not gate.wait(0.01):
                mp.check_cancelled()
        except BaseException as error:
            seen.append(error)
            raise
        finally:
            finished.set()

    handle = work()
    with pytest.raises(mp.TaskTimeoutError, match="timed out"):
        handle.get(5)
    assert handle.status == "timed out"
    assert wait_until_idle(5)
    assert finished.wait(5)  # the task's thread stops at its next check_cancelled()
    assert len(seen) == 1
    assert isinstance(seen[0], mp.TaskTimeoutError)
    assert seen[0] is not handle.exception()  # a fresh error for the task's own thread


def test_progress_reported_after_the_handle_ended_is_ignored(gate: threading.Event) -> None:
    # A cancelled task's code goes on until it returns: its reports changed the
    # progress of a handle that had already ended, as report_progress(task_id=...) does not.
    started = threading.Event()
    reported = threading.Event()
    heard: list[float] = []

    @mp.parallel(backend="thread")
    def work() -> None:
        mp.report_progress(0.2, "started")
        started.set()
        assert gate.wait(5)
        mp.report_progress(0.9, "too late")
        reported.set()

    handle = work().on_progress(heard.append)
    assert started.wait(5)
    assert handle.cancel() is True
    gate.set()
    assert reported.wait(5)
    assert (handle.get_progress(), handle.get_progress_message()) == (0.2, "started")
    assert heard == [0.2]


# -- metadata --------------------------------------------------------------------------


def test_metadata_set_get_and_get_all(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> int:
        return 1

    handle = work()
    assert handle.get_metadata("missing") is None
    assert handle.get_metadata("missing", "fallback") == "fallback"
    assert handle.get_all_metadata() == {}
    handle.set_metadata("user", "ada")
    handle.set_metadata("attempt", 2)
    handle.set_metadata("attempt", 3)
    assert handle.get_metadata("user") == "ada"
    assert handle.get_metadata("attempt") == 3
    assert handle.get_all_metadata() == {"user": "ada", "attempt": 3}
    handle.get(5)


def test_get_all_metadata_returns_a_copy(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        pass

    handle = work()
    handle.set_metadata("key", "value")
    copy = handle.get_all_metadata()
    copy["key"] = "changed"
    copy["other"] = 1
    assert handle.get_all_metadata() == {"key": "value"}
    assert handle.get_metadata("other") is None
    handle.get(5)


@pytest.mark.parametrize("key", [1, None, ("a",), b"key"])
def test_metadata_key_must_be_a_string(backend: str, key: object) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        pass

    handle = work()
    # The value, not only its type: b"key" read "got bytes".
    with pytest.raises(TypeError, match=re.escape(f"metadata key must be a str, got {key!r} of type {type(key).__name__}")):
        handle.set_metadata(key, "value")  # type: ignore[arg-type]
    assert handle.get_all_metadata() == {}
    handle.get(5)


# -- the task's error ------------------------------------------------------------------


class QuotaExceeded(Exception):
    def __init__(self, user: str, limit: int) -> None:
        super().__init__(f"{user} over {limit}")
        self.user = user
        self.limit = limit


def test_error_comes_back_as_itself(backend: str) -> None:
    raised: list[BaseException] = []

    @mp.parallel(backend=backend)
    def charge(user: str) -> None:
        error = QuotaExceeded(user, 10)
        raised.append(error)
        raise error

    handle = charge("ada")
    try:
        handle.get(5)
    except QuotaExceeded as caught:  # ``except`` with the task's own type works
        assert caught is raised[0]
        assert caught.user == "ada" and caught.limit == 10
    else:
        pytest.fail("get() did not raise")


def test_error_traceback_includes_the_task_frame(backend: str) -> None:
    @mp.parallel(backend=backend)
    def parse_row() -> None:
        helper_that_fails()

    with pytest.raises(ValueError) as caught:
        parse_row().get(5)
    names = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert "parse_row" in names
    assert "helper_that_fails" in names
    assert names.index("parse_row") < names.index("helper_that_fails")


def helper_that_fails() -> None:
    raise ValueError("row 3 is malformed")


def test_error_note_names_the_task(backend: str) -> None:
    @mp.parallel(backend=backend, name="import-users")
    def work() -> None:
        raise ValueError("bad row")

    handle = work()
    handle.wait(5)
    handle.set_metadata("file", "users.csv")
    handle.set_metadata("row", 3)
    with pytest.raises(ValueError, match="bad row") as caught:
        handle.get()
    (note,) = library_notes(caught.value)
    assert f"task {handle.get_task_id()}" in note
    assert "import-users" in note
    assert "failed after" in note
    assert "'file': 'users.csv'" in note
    assert "'row': 3" in note


def test_error_note_names_the_qualname_by_default(backend: str) -> None:
    @mp.parallel(backend=backend)
    def default_named() -> None:
        raise ValueError("x")

    with pytest.raises(ValueError) as caught:
        default_named().get(5)
    (note,) = library_notes(caught.value)
    assert default_named.__qualname__ in note
    assert "metadata" not in note  # none was set


def test_error_note_is_added_once(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        raise ValueError("once")

    handle = work()
    handle.wait(5)
    errors: list[BaseException] = []
    for _ in range(3):
        with pytest.raises(ValueError) as caught:
            handle.get()
        errors.append(caught.value)
    with pytest.raises(ValueError):
        handle.result()
    with pytest.raises(ValueError):
        handle.try_get()
    errors.append(handle.exception())  # type: ignore[arg-type]
    handle.on_error(errors.append)
    assert all(error is errors[0] for error in errors)
    assert len(library_notes(errors[0])) == 1


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """An error whose attributes cannot be set once made: ``__notes__`` neither (its ``__setattr__`` refuses all)."""

    row: int


def refuse_row(row: int) -> None:
    raise FrozenError(row)


def test_an_error_that_refuses_new_attributes_comes_back_as_itself_with_its_note(backend: str) -> None:
    # The note was added through the error's __setattr__ (add_note's, or an assignment
    # on 3.10): a frozen dataclass's raised FrozenInstanceError in its place, and a
    # map with on_error="skip" raised it, its results lost.
    with pytest.raises(FrozenError) as caught:
        mp.parallel(backend=backend)(refuse_row)(3).get(5)
    (note,) = library_notes(caught.value)
    assert "failed after" in note
    assert mp.parallel_map(refuse_row, range(4), backend=backend, on_error="skip") == []
    with pytest.raises(FrozenError) as caught:
        mp.parallel_map(refuse_row, [7], backend=backend)
    assert any("raised by item 0" in note for note in library_notes(caught.value))


def test_user_notes_are_kept(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        error = ValueError("with a note")
        error.__notes__ = ["added by the task"]  # what add_note() does, also on 3.10
        raise error

    with pytest.raises(ValueError) as caught:
        work().get(5)
    notes = notes_of(caught.value)
    assert notes[0] == "added by the task"
    assert len(library_notes(caught.value)) == 1


@pytest.mark.timeout(10)
def test_a_metadata_value_whose_repr_raises_leaves_the_task_error_in_place(backend: str) -> None:
    # The note shows the metadata's repr(): one that raised (an ORM object whose
    # session has closed) came out of get() in place of the task's own error,
    # which was then handed out without a note, and never reached on_error.
    class Detached:
        def __repr__(self) -> str:
            raise RuntimeError("instance is not bound to a session")

    @mp.parallel(backend=backend)
    def work() -> None:
        raise ValueError("bad row")

    handle = work()
    handle.wait(5)
    handle.set_metadata("user", Detached())
    handle.set_metadata("row", 3)
    with pytest.raises(ValueError, match="bad row") as caught:
        handle.get()
    heard: list[BaseException] = []
    handle.on_error(heard.append)
    assert heard == [caught.value]
    (note,) = library_notes(caught.value)
    assert "metadata: {'user': <Detached object; repr() raised RuntimeError>, 'row': 3}" in note


@pytest.mark.timeout(10)
def test_error_note_added_once_under_concurrent_gets(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel(backend="thread")
    def work() -> None:
        started.set()
        assert gate.wait(5)
        raise ValueError("many readers")

    handle = work()
    assert started.wait(5)
    readers = 8
    barrier = threading.Barrier(readers + 1)
    caught: list[BaseException] = []
    lock = threading.Lock()

    def read() -> None:
        barrier.wait(5)
        try:
            handle.get(5)
        except ValueError as error:
            with lock:
                caught.append(error)

    threads = [threading.Thread(target=read) for _ in range(readers)]
    for thread in threads:
        thread.start()
    barrier.wait(5)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert len(caught) == readers
    assert len(library_notes(caught[0])) == 1


def test_library_errors_get_no_note(backend: str, gate: threading.Event) -> None:
    @mp.parallel(backend=backend, timeout=0.05)
    def work() -> None:
        while not gate.wait(0.01):
            mp.check_cancelled()

    handle = work()
    with pytest.raises(mp.TaskTimeoutError) as caught:
        handle.get(5)
    assert library_notes(caught.value) == []
    assert f"task {handle.get_task_id()}" in str(caught.value)


def test_error_keeps_its_cause(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        try:
            {}["missing"]
        except KeyError as error:
            raise LookupError("wrapped") from error

    with pytest.raises(LookupError) as caught:
        work().get(5)
    assert isinstance(caught.value.__cause__, KeyError)
