"""Exceptions raised in worker processes arrive equal, with their whole chain, as objects.

One table of exception families (the ``OSError`` family with its C-level
fields, ``socket.gaierror``, ``UnicodeDecodeError``, ``CalledProcessError``,
``JSONDecodeError``, ``ImportError``'s keyword fields, user classes with a
custom ``__init__`` or ``__reduce__``) times every way an error reaches the
caller from the process backend: ``get()``, a ``gather``, a map. Then the cause
chain: explicit and implicit, suppressed, notes, ``ExceptionGroup`` members, and
the worker's traceback below the deepest exception.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import json
import os
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chained_errors import explicit_cause, implicit_context, suppressed_context
from pool_helpers import fresh_process_pool

import makeparallel as mp
from makeparallel._remote_errors import RemoteTraceback

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(60),
]


class ConfigMissing(OSError):
    """A user subclass of OSError, raised as ConfigMissing(errno, strerror, filename)."""


class CustomInit(Exception):
    """Its __init__ takes other arguments than it passes on: rebuilt without __init__."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


class OwnReduce(Exception):
    """Its own __reduce__ is the way to rebuild it."""

    def __init__(self, table: str, *, row: int) -> None:
        super().__init__(f"{table} row {row}")
        self.table = table
        self.row = row

    def __reduce__(self) -> Any:
        return (_own_reduce, (self.table, self.row))


def _own_reduce(table: str, row: int) -> OwnReduce:
    return OwnReduce(table, row=row)


class MissingFileWithPath(OSError):
    """An OSError subclass with its own signature: the rebuild still fills errno and filename."""

    def __init__(self, path: str) -> None:
        super().__init__(2, "No such file or directory", path)
        self.path = path


class Slotted(Exception):
    """Keeps a field in a slot, which BaseException's own pickling leaves out."""

    __slots__ = ("code",)

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


EXCEPTIONS: dict[str, Callable[[], BaseException]] = {
    "OSError subclass": lambda: ConfigMissing(2, "No such file or directory", "/data/in.csv"),
    "FileNotFoundError": lambda: FileNotFoundError(2, "No such file or directory", "/x"),
    "OSError with two filenames": lambda: OSError(18, "Invalid cross-device link", "/a", None, "/b"),
    "OSError subclass, own signature": lambda: MissingFileWithPath("/etc/app.toml"),
    "socket.gaierror": lambda: socket.gaierror(-2, "Name or service not known"),
    "UnicodeDecodeError": lambda: UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"),
    "CalledProcessError": lambda: subprocess.CalledProcessError(3, ["ls", "-l"], b"out", b"err"),
    "JSONDecodeError": lambda: json.JSONDecodeError("Expecting value", '{"a": }', 6),
    "ImportError with name and path": lambda: ImportError("no module", name="plugins.x", path="/p/x.py"),
    "KeyError": lambda: KeyError("id"),
    "custom __init__": lambda: CustomInit(7, "custom signature"),
    "own __reduce__": lambda: OwnReduce("users", row=57),
    "SyntaxError with its location": lambda: SyntaxError("invalid syntax", ("job.py", 3, 5, "x = (\n", 3, 6)),
    "__slots__": lambda: Slotted("disk full", 28),
}

_FIELDS = ("errno", "strerror", "filename", "filename2", "encoding", "object", "start", "end", "reason",
           "returncode", "cmd", "output", "stderr", "msg", "doc", "pos", "lineno", "colno", "name", "path",
           "offset", "text", "end_lineno", "end_offset", "code", "table", "row")


def raise_named(name: str) -> None:
    raise EXCEPTIONS[name]()


def raise_at_item(x: str) -> str:
    if x != "ok":
        raise_named(x)
    return x


def describe(error: BaseException) -> dict[str, Any]:
    """Everything that must arrive equal: type, args, str, fields, __dict__ without our note."""
    state = {k: v for k, v in vars(error).items() if k != "__notes__"}
    return {
        "type": type(error),
        "args": error.args,
        "str": str(error),
        "fields": {f: getattr(error, f, None) for f in _FIELDS},
        "dict": state,
    }


def via_get(name: str) -> BaseException:
    with pytest.raises(BaseException) as raised:
        mp.parallel(backend="process")(raise_named)(name).get(timeout=30)
    return raised.value


def via_gather(name: str) -> BaseException:
    with pytest.raises(BaseException) as raised:
        mp.gather([mp.parallel(backend="process")(raise_named)(name)], timeout=30)
    return raised.value


def via_map(name: str) -> BaseException:
    with pytest.raises(BaseException) as raised:
        mp.parallel_map(raise_at_item, ["ok", name, "ok"], backend="process", chunksize=3)
    return raised.value


WAYS = {"get": via_get, "gather": via_gather, "parallel_map": via_map}


@pytest.mark.parametrize("way", list(WAYS.values()), ids=list(WAYS))
@pytest.mark.parametrize("name", list(EXCEPTIONS))
def test_an_exception_arrives_equal(name: str, way: Callable[[str], BaseException]) -> None:
    arrived = way(name)
    assert describe(arrived) == describe(EXCEPTIONS[name]())
    text = "".join(traceback.format_exception(arrived))
    assert "raise_named" in text, text  # the worker's traceback is shown


# -- the chain ---------------------------------------------------------------------------------


def with_notes() -> None:
    error = ValueError("noted")
    error.add_note("row 57 of users.csv")
    raise error


def group_of_chained() -> None:
    try:
        raise KeyError("inner")
    except KeyError as inner:
        member = ValueError("member")
        member.__cause__ = inner
    raise ExceptionGroup("several", [member, TypeError("other")])


def cause_of_custom_class() -> None:
    try:
        raise CustomInit(3, "deep")
    except CustomInit as error:
        raise ConfigMissing(2, "No such file or directory", "/c") from error


def failure(fn: Callable[[], None]) -> BaseException:
    with pytest.raises(BaseException) as raised:
        mp.parallel(backend="process")(fn)().get(timeout=30)
    return raised.value


def remote_text(error: BaseException) -> str:
    """The RemoteTraceback hung below the deepest exception of the chain."""
    deepest = error
    while True:
        below = deepest.__cause__ if deepest.__cause__ is not None else (
            None if deepest.__suppress_context__ else deepest.__context__
        )
        if below is None or isinstance(below, RemoteTraceback):
            break
        deepest = below
    assert isinstance(deepest.__cause__, RemoteTraceback), repr(deepest)
    return str(deepest.__cause__)


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """A frozen dataclass: its __setattr__ refuses every attribute, args and __cause__ too."""

    code: int


def raise_frozen_from_a_key_error() -> None:
    try:
        {}["id"]
    except KeyError as error:
        raise FrozenError(7) from error


def raise_frozen() -> None:
    raise FrozenError(8)


class FrozenOnArrival:
    """An argument whose unpickling, in the worker, raises a frozen dataclass error."""

    def __reduce__(self) -> Any:
        return (raise_frozen, ())


def test_a_frozen_dataclass_error_arrives_as_itself_with_its_chain() -> None:
    # It was rebuilt with its args, fields and chain set through its own __setattr__,
    # which refuses them all: the task failed with a TaskSerializationError instead.
    error = failure(raise_frozen_from_a_key_error)
    assert type(error) is FrozenError and error.code == 7
    assert type(error.__cause__) is KeyError and error.__cause__.args == ("id",)
    assert error.__suppress_context__ is True
    assert "raise_frozen_from_a_key_error" in remote_text(error)


def test_a_frozen_dataclass_error_raised_as_the_worker_unpickles_the_task_arrives_as_itself() -> None:
    with pytest.raises(FrozenError) as raised:
        mp.parallel(backend="process")(len)(FrozenOnArrival()).get(timeout=30)
    assert raised.value.code == 8
    assert any("unpickled the task" in note for note in raised.value.__notes__)


def test_an_explicit_cause_arrives_as_the_object() -> None:
    error = failure(explicit_cause)
    assert type(error) is ValueError and error.args == ("bad row",)
    cause = error.__cause__
    assert type(cause) is KeyError and cause.args == ("id",)
    assert error.__context__ is cause  # one object, as in the worker
    assert error.__suppress_context__ is True
    text = remote_text(error)
    assert "explicit_cause" in text and "KeyError: 'id'" in text


def test_an_implicit_context_arrives_as_the_object() -> None:
    error = failure(implicit_context)
    assert type(error.__context__) is KeyError and error.__context__.args == ("id",)
    assert error.__suppress_context__ is False
    assert isinstance(error.__context__.__cause__, RemoteTraceback)  # below the deepest
    printed = "".join(traceback.format_exception(error))
    assert "During handling of the above exception, another exception occurred" in printed
    assert printed.index("implicit_context") < printed.index("ValueError: while handling")


def test_a_suppressed_context_stays_suppressed() -> None:
    error = failure(suppressed_context)
    assert error.__suppress_context__ is True
    assert type(error.__context__) is KeyError
    assert "suppressed_context" in remote_text(error)
    printed = "".join(traceback.format_exception(error))
    assert "KeyError" not in printed.split("The above exception was the direct cause")[-1]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="add_note exists from Python 3.11")
def test_notes_arrive_before_the_task_note() -> None:
    error = failure(with_notes)
    notes = error.__notes__
    assert notes[0] == "row 57 of users.csv"
    assert notes[1].startswith("makeparallel: task ")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup exists from Python 3.11")
def test_exception_group_members_keep_their_chains() -> None:
    error = failure(group_of_chained)
    assert type(error) is ExceptionGroup
    member, other = error.exceptions
    assert type(member) is ValueError and type(other) is TypeError
    assert type(member.__cause__) is KeyError and member.__cause__.args == ("inner",)


def test_a_chain_of_user_classes_arrives_equal() -> None:
    error = failure(cause_of_custom_class)
    assert type(error) is ConfigMissing and error.errno == 2 and error.filename == "/c"
    cause = error.__cause__
    assert type(cause) is CustomInit and cause.code == 3 and str(cause) == "3: deep"


def cause_is_itself() -> None:
    error = ValueError("bad row")
    raise error from error  # a chain that loops on itself: legal, and printed fine by Python


def raising_at_item_one(raise_it: Callable[[], None], x: int) -> int:
    """A map's function: ``x``, but item 1 raises as ``raise_it`` does."""
    if x == 1:
        raise_it()
    return x


@pytest.mark.timeout(60)
def test_a_chain_that_loops_arrives_and_the_pool_lives_on() -> None:
    # A cycle cut by pickling the exception met again as None made pickle's memo
    # hand that None back for the top exception itself: the pool's loop thread
    # died on it, the handle never settled and every later process task failed.
    handle = mp.parallel(backend="process")(cause_is_itself)()
    with pytest.raises(BaseException) as raised:
        handle.get(timeout=20)
    assert type(raised.value) is ValueError and raised.value.args == ("bad row",)
    mapped = functools.partial(raising_at_item_one, cause_is_itself)
    with pytest.raises(ValueError, match="bad row"):
        mp.parallel_map(mapped, range(3), backend="process", chunksize=3, timeout=20)
    assert mp.parallel(backend="process")(abs)(-3).get(timeout=20) == 3


def attribute_error_on_a_lock() -> None:
    import threading

    threading.Lock().aquire()  # a typo on an object that cannot be pickled: AttributeError.obj is the lock


@pytest.mark.timeout(60)
def test_an_attribute_error_on_an_unpicklable_object_arrives_as_itself() -> None:
    # A rebuild that carries AttributeError's C-level field ``obj`` (the lock),
    # which cannot be pickled, made the error arrive as a TaskError, which
    # ``except AttributeError`` does not catch (it does on threads).
    error = failure(attribute_error_on_a_lock)
    assert type(error) is AttributeError
    assert str(error) == "'_thread.lock' object has no attribute 'aquire'"
    assert error.name == "aquire"
    mapped = functools.partial(raising_at_item_one, attribute_error_on_a_lock)
    with pytest.raises(AttributeError, match="aquire"):
        mp.parallel_map(mapped, range(3), backend="process", chunksize=3, timeout=30)


def looping_error_as_result(x: int) -> dict[str, Any]:
    error = ValueError(f"bad row {x}")
    error.__cause__ = error  # as `raise error from error` leaves it
    return {"error": error, "row": x}


def error_repr(error: BaseException) -> str:
    return repr(error)


@pytest.mark.timeout(60)
def test_an_exception_whose_chain_loops_travels_as_itself_in_results_and_arguments() -> None:
    # Silently wrong, once: the exception met again inside its own chain was
    # pickled as None, and pickle's memo then handed that None back for the
    # exception itself, so results and arguments holding it arrived as None.
    result = mp.parallel(backend="process")(looping_error_as_result)(1).get(timeout=30)
    assert type(result["error"]) is ValueError and result["error"].args == ("bad row 1",)
    results = mp.parallel_map(looping_error_as_result, range(3), backend="process", chunksize=3, timeout=30)
    assert [type(r["error"]) for r in results] == [ValueError] * 3
    argument = looping_error_as_result(2)["error"]
    assert mp.parallel(backend="process")(error_repr)(argument).get(timeout=30) == "ValueError('bad row 2')"


class Job:
    """A record of work that keeps the error it failed with."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: BaseException | None = None


class JobFailed(Exception):
    """Refers to its job, which refers back to it: through ``__dict__``, or ``args`` too."""

    def __init__(self, job: Job, in_args: bool) -> None:
        super().__init__(job if in_args else job.name)
        self.job = job
        job.error = self


def job_failed(in_args: bool) -> None:
    raise JobFailed(Job("nightly"), in_args)


class Enrolled(Exception):
    """Made from its job alone, and enrolled on it: its own pickling makes a faithful copy, enrolled too."""

    def __init__(self, job: Job) -> None:
        super().__init__(job)
        self.job = job
        job.error = self


def enrolled() -> None:
    raise Enrolled(Job("nightly"))


@pytest.mark.timeout(90)
def test_an_exception_whose_init_enrolls_it_on_its_argument_arrives_as_itself() -> None:
    # Checking its own pickling makes a copy, which its __init__ enrolls on the job in its
    # place; each check of what the job holds then met a new copy, never the one it was
    # cutting, and made another: the worker pickled copies without end, or died of it.
    error = failure(enrolled)
    assert type(error) is Enrolled, repr(error)
    assert error.job.name == "nightly" and error.job.error is error
    assert mp.parallel(backend="process")(abs)(-3).get(timeout=30) == 3


class Listed(Exception):
    """Made from its job alone, and listed on it: a copy made with its ``__init__`` is listed there too."""

    def __init__(self, job: Job) -> None:
        super().__init__(job)
        job.errors = [*getattr(job, "errors", ()), self]


def listed() -> None:
    raise Listed(Job("nightly"))


@pytest.mark.timeout(20)
def test_pickling_an_exception_leaves_what_its_init_was_given_as_it_was() -> None:
    # Trying its own pickling made a copy with its __init__, which listed the copy on the
    # sender's job; pickling the job then met that copy and listed another, without end.
    from makeparallel import _serialization

    job = Job("nightly")
    error = Listed(job)
    arrived = _serialization.loads(*_serialization.dumps(error))
    assert job.errors == [error]  # type: ignore[attr-defined]
    assert type(arrived) is Listed and arrived.args[0].errors == [arrived]
    from_worker = failure(listed)
    assert type(from_worker) is Listed and from_worker.args[0].errors == [from_worker]


class InBatch(Exception):
    """One of a batch of errors, each keeping the list of them all."""

    def __init__(self, code: int, batch: list[InBatch]) -> None:
        super().__init__(f"row {code}")
        self.batch = batch


@pytest.mark.timeout(20)
def test_a_value_many_exceptions_keep_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each exception's check that its attributes pickle pickled the batch whole again:
    # the work grew as the square of the batch (a thousand errors took seconds).
    from makeparallel import _serialization

    batch: list[InBatch] = []
    batch.extend(InBatch(code, batch) for code in range(50))
    checks = []
    objects_pickled = _serialization.objects_pickled

    def counted(obj: object, exceptions: object) -> object:
        checks.append(obj is batch)
        return objects_pickled(obj, exceptions)  # type: ignore[arg-type]

    monkeypatch.setattr(_serialization, "objects_pickled", counted)
    arrived = _serialization.loads(*_serialization.dumps(batch))
    assert checks.count(True) == 1
    assert [error.args for error in arrived] == [error.args for error in batch]
    assert all(type(error) is InBatch and error.batch is arrived for error in arrived)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("in_args", [False, True], ids=["attribute", "argument"])
def test_an_exception_its_own_attributes_refer_back_to_arrives_as_itself(in_args: bool) -> None:
    # Met again inside its own attributes or arguments, the exception was cut to
    # None there, and pickle's memo handed that None back for the exception
    # itself: the pool's loop thread died on it and the handle never settled.
    error = failure(functools.partial(job_failed, in_args))
    assert type(error) is JobFailed and error.job.name == "nightly"
    assert error.job.error is error  # the cycle arrives as a cycle, as on threads
    assert error.args == ((error.job,) if in_args else ("nightly",))
    mapped = functools.partial(raising_at_item_one, functools.partial(job_failed, in_args))
    with pytest.raises(JobFailed):
        mp.parallel_map(mapped, range(3), backend="process", chunksize=3, timeout=30)
    assert mp.parallel(backend="process")(abs)(-3).get(timeout=30) == 3


def http_error_with_its_response() -> None:
    import email.message
    import urllib.error

    # As urllib.request.urlopen raises it for a 404: its fp is the response body. Closed as
    # the error leaves (still no file object pickles): left open, the worker's collector
    # found it during a later test's task and printed a ResourceWarning into its output.
    with open(os.devnull, "rb") as body:
        raise urllib.error.HTTPError("http://127.0.0.1/missing", 404, "Not Found", email.message.Message(), body)


@pytest.mark.timeout(60)
def test_an_http_error_holding_its_response_arrives_as_an_http_error() -> None:
    # The open response cannot be pickled; with it, the error arrived as a TaskError
    # and ``except urllib.error.HTTPError`` no longer caught a 404 (it does on
    # threads). Its type, code, message and url travel without the body.
    import urllib.error

    error = failure(http_error_with_its_response)
    assert type(error) is urllib.error.HTTPError
    assert error.code == 404 and str(error) == "HTTP Error 404: Not Found"
    assert error.url == "http://127.0.0.1/missing"
    assert error.fp is None and any("fp" in note for note in error.__notes__)


def config_missing_holding_a_lock() -> None:
    error = ConfigMissing(2, "No such file or directory", "/data/in.csv")
    error.lock = threading.Lock()  # type: ignore[attr-defined]  # an attribute that cannot be pickled
    raise error


@pytest.mark.timeout(60)
def test_an_exception_with_an_attribute_that_cannot_be_pickled_arrives_as_itself_with_a_note() -> None:
    error = failure(config_missing_holding_a_lock)
    assert type(error) is ConfigMissing
    assert (error.errno, error.filename, str(error)) == (2, "/data/in.csv", "[Errno 2] No such file or directory: '/data/in.csv'")
    assert error.lock is None  # type: ignore[attr-defined]
    assert "makeparallel: lock could not be pickled, and arrived as None" in error.__notes__


def value_error_with_a_lock_argument() -> None:
    raise ValueError("pool exhausted", threading.Lock())


def key_error_while_handling_one_with_a_lock_argument() -> None:
    try:
        value_error_with_a_lock_argument()
    except ValueError:
        raise KeyError("user 7")  # its __context__ is the ValueError


def group_with_a_member_holding_a_lock_argument() -> None:
    group = vars(builtins)["ExceptionGroup"]  # Python 3.11+
    raise group("batch", [ValueError("fine"), ValueError("pool exhausted", threading.Lock())])


@pytest.mark.timeout(60)
def test_an_exception_with_an_argument_that_cannot_be_pickled_arrives_as_itself_with_a_note() -> None:
    # A lock (a connection, a socket) among an exception's args made the whole
    # exception a TaskError, where an attribute holding one arrived as None.
    error = failure(value_error_with_a_lock_argument)
    assert type(error) is ValueError
    assert error.args == ("pool exhausted", None)
    assert "makeparallel: args[1] could not be pickled, and arrived as None" in error.__notes__


@pytest.mark.timeout(60)
def test_a_chain_member_with_an_argument_that_cannot_be_pickled_keeps_the_raised_exception() -> None:
    # The exception raised could travel; the one in its __context__ could not, and
    # ``except KeyError`` around get() no longer caught what the task raised.
    error = failure(key_error_while_handling_one_with_a_lock_argument)
    assert type(error) is KeyError and error.args == ("user 7",)
    context = error.__context__
    assert type(context) is ValueError and context.args == ("pool exhausted", None)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is Python 3.11+")
@pytest.mark.timeout(60)
def test_a_group_member_with_an_argument_that_cannot_be_pickled_keeps_the_group() -> None:
    error = failure(group_with_a_member_holding_a_lock_argument)
    assert type(error) is vars(builtins)["ExceptionGroup"]
    assert [member.args for member in error.exceptions] == [("fine",), ("pool exhausted", None)]


ASYNC_FAILURE_SCRIPT = """
import asyncio
import makeparallel as mp

async def fails(x):
    await asyncio.sleep(0)
    raise ValueError(x)

try:
    {call}
except ValueError:
    print("raised", flush=True)
"""


@pytest.mark.parametrize(
    "call",
    ["mp.parallel_map(fails, range(4), backend='process')", "mp.parallel(backend='process')(fails)(1).get(timeout=30)"],
    ids=["map", "parallel call"],
)
def test_a_failing_async_function_on_processes_leaves_no_traceback_at_exit(call: str) -> None:
    """A program whose ``async def`` task failed on a worker process exits quietly, as on threads.

    The caller catches the task's ``ValueError``; yet as the program exits, stderr gets
    ``Exception ignored in: <function _OwnLoop.__del__>`` and a ``TypeError: 'NoneType'
    object is not callable`` traceback from inside asyncio: the worker's own event loop
    is closed only at interpreter shutdown, by the garbage collector.
    """
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND" and not k.startswith("COVERAGE_")}
    result = subprocess.run(
        [sys.executable, "-c", ASYNC_FAILURE_SCRIPT.format(call=call)],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "raised", result.stdout + result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr



SCRIPT_FUNCTIONS = """\
import sys, traceback
import makeparallel as mp

class Where:
    def file(self):
        return sys._getframe().f_code.co_filename

def fails():
    check = lambda: 1 / 0
    return check()

if __name__ == "__main__":
    print(mp.parallel(backend="process")(Where().file)().get(timeout=30))
    try:
        mp.parallel(backend="process")(fails)().get(timeout=30)
    except ZeroDivisionError as error:
        text = "".join(traceback.format_exception(error))
        print(f'File "{__file__}", line 9, in <lambda>' in text, "check = lambda: 1 / 0" in text)
"""


def test_a_function_of_a_script_sent_by_value_keeps_its_file_in_the_worker(tmp_path: Path) -> None:
    # cloudpickle names the code it sends by value "<dynamic-code>": a worker's traceback
    # of a script's function named no file and showed no line, nor did its log records
    # and warnings; a coverage tool could not tell which file it ran.
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_FUNCTIONS)
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=50, env=env, check=False
    )
    assert result.stdout.split() == [str(script), "True", "True"], result.stderr


def test_an_unpicklable_async_function_mapped_on_processes_is_named_as_a_plain_one_is() -> None:
    """The error for a map of an ``async def`` function that cannot be pickled speaks of the user's function.

    An ``async def`` function's map said ``argument 0 (_Awaited)``, where a plain
    one's named the function: a private wrapper the user never wrote, and no word
    that it is their function that cannot travel.
    """
    lock = threading.Lock()  # a closure over it cannot be pickled

    def locked(x: int) -> int:
        with lock:
            return x

    async def async_locked(x: int) -> int:
        with lock:
            return x

    messages = []
    for fn in (locked, async_locked):
        with pytest.raises(mp.TaskSerializationError) as caught:
            mp.parallel_map(fn, range(2), backend="process")
        messages.append(str(caught.value))
    assert "Awaited" not in messages[1], messages[1]
    assert "async_locked" in messages[1], messages[1]
    assert messages[1].split(" cannot be sent", 1)[1] == messages[0].split(" cannot be sent", 1)[1], messages


def open_itself(path: str) -> Any:
    return open(path)  # noqa: SIM115  # returned open, as the test means


def append_line(file: Any) -> str:
    file.write("from the task\n")
    file.flush()
    return type(file).__name__


def test_an_open_text_file_raises_taskserializationerror_both_ways(tmp_path: Path) -> None:
    # cloudpickle sent a copy of the file in a StringIO: the task's writes went nowhere,
    # without a word, and a returned file arrived as a copy of all its text.
    path = tmp_path / "data.txt"
    path.write_text("line\n")
    with open(path, "r+") as file, pytest.raises(mp.TaskSerializationError, match="data.txt.*open it there"):
        mp.parallel(backend="process")(append_line)(file)
    with pytest.raises(mp.TaskSerializationError, match="data.txt.*open it there"):
        mp.parallel(backend="process")(open_itself)(str(path)).get(timeout=30)
    assert path.read_text() == "line\n"


def test_a_submission_short_of_descriptors_raises_the_systems_error_not_a_pickling_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At the descriptor limit, importing cloudpickle to pickle a task failed with EMFILE,
    # and the submission raised TaskSerializationError: "the function could not be
    # pickled (OSError: [Errno 24] Too many open files: '.../pickle.py')".
    from makeparallel import _serialization

    def short(fn: Any) -> bytes:
        raise OSError(24, "Too many open files", "pickle.py")

    monkeypatch.setattr(_serialization, "dumps_function", short)
    with pytest.raises(OSError) as caught:
        mp.parallel(backend="process")(describe)(ValueError("x"))
    assert type(caught.value) is OSError and caught.value.errno == 24


def nested_deep(how: str) -> None:
    """Raise an exception nested 40 deep: groups of groups, or wrappers that keep the error they wrap."""
    error: BaseException = ValueError("at the bottom")
    for level in range(40):
        if how == "group":
            error = ExceptionGroup(f"level {level}", [error])
        else:
            wrapper = RuntimeError(f"level {level}")
            wrapper.wrapped = error  # type: ignore[attr-defined]
            error = wrapper
    raise error


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup exists from Python 3.11")
@pytest.mark.parametrize("how", ["group", "attribute"])
def test_an_exception_nested_deep_arrives_whole(how: str) -> None:
    # Checking whether an exception refers back to itself pickled what it holds, and
    # with it each nested exception, checks and all, then pickled it again: each level
    # doubled the work, and a worker spent hours pickling an error nested 40 deep.
    error = failure(functools.partial(nested_deep, how))
    depth = 0
    while type(error) is not ValueError:
        error = error.exceptions[0] if how == "group" else error.wrapped  # type: ignore[attr-defined]
        depth += 1
    assert depth == 40 and error.args == ("at the bottom",)


class StrFails(Exception):
    """An exception whose str() raises: Python prints it as ``<exception str() failed>``."""

    def __str__(self) -> str:
        raise RuntimeError("no text for this one")


def str_fails_holding_a_lock() -> None:
    # A class of the function's own, sent by value, with a lock in its namespace: nothing
    # of it can be pickled (an argument or attribute that cannot arrives as None).
    class StrFails(Exception):
        lock = threading.Lock()

        def __str__(self) -> str:
            raise RuntimeError("no text for this one")

    raise StrFails()


@pytest.mark.timeout(60)
def test_an_unpicklable_exception_whose_str_fails_is_described_without_killing_the_worker() -> None:
    # Describing it in a TaskError called its str(), which raised in the worker outside
    # any handler: the worker died, and the task failed with a WorkerCrashedError.
    error = failure(str_fails_holding_a_lock)
    assert type(error) is mp.TaskError, repr(error)
    assert "StrFails: <exception str() failed>" in str(error)
    mapped = functools.partial(raising_at_item_one, str_fails_holding_a_lock)
    with pytest.raises(mp.TaskError, match=r"StrFails: <exception str\(\) failed>"):
        mp.parallel_map(mapped, range(3), backend="process", chunksize=3, timeout=30)


_in_a_worker = False  # set by the task below in the worker that runs it; never in the test's process


def _make_readable_only_in_a_worker() -> ReadableOnlyInAWorker:
    if not _in_a_worker:
        raise StrFails()
    return ReadableOnlyInAWorker()


class ReadableOnlyInAWorker:
    """Unpickled here, it raises an exception whose str() fails."""

    def __reduce__(self) -> Any:
        return (_make_readable_only_in_a_worker, ())


def raise_holding_what_is_readable_only_in_a_worker() -> None:
    global _in_a_worker
    _in_a_worker = True
    error = ValueError("x")
    error.held = ReadableOnlyInAWorker()  # type: ignore[attr-defined]
    raise error


@pytest.mark.timeout(60)
def test_an_exception_raised_as_a_result_is_unpickled_is_described_without_killing_the_pool() -> None:
    # The pool's loop thread described the unpickling error with its str(), which raised:
    # the loop thread died, and the task's handle never settled.
    error = failure(raise_holding_what_is_readable_only_in_a_worker)
    assert type(error) is mp.TaskSerializationError
    assert "could not be unpickled here: StrFails: <exception str() failed>" in str(error)
    mapped = functools.partial(raising_at_item_one, raise_holding_what_is_readable_only_in_a_worker)
    with pytest.raises(mp.TaskSerializationError, match=r"StrFails: <exception str\(\) failed>"):
        mp.parallel_map(mapped, range(3), backend="process", chunksize=3, timeout=30)
    assert mp.parallel(backend="process")(abs)(-3).get(timeout=30) == 3


def raise_an_error_only_the_worker_imports(folder: str) -> None:
    """Raise an error of a module the worker imports from ``folder``, a plugin folder it keeps on its ``sys.path``."""
    (Path(folder) / "plugin_of_a_worker.py").write_text("class PluginError(Exception):\n    pass\n")
    sys.path.insert(0, folder)  # (taken off again, the class would travel by value)
    from plugin_of_a_worker import PluginError  # type: ignore[import-not-found]

    raise PluginError("no licence")


@pytest.mark.timeout(60)
def test_an_error_that_cannot_be_unpickled_here_is_told_as_raised_not_as_a_result(tmp_path: Path) -> None:
    # The task raised, but its failure said "the result of task N came back from the
    # worker": a user looked for a return value that could not be unpickled.
    try:
        error = failure(functools.partial(raise_an_error_only_the_worker_imports, str(tmp_path)))
    finally:
        fresh_process_pool(mp.get_process_pool_info()["num_workers"])  # no worker keeps the folder on its path
    assert type(error) is mp.TaskSerializationError
    message = str(error)
    assert "raised an exception" in message and "the result" not in message, message
    assert "could not be unpickled here: ModuleNotFoundError: No module named 'plugin_of_a_worker'" in message
    assert "Raise exceptions" in message, message  # what to do


def member_handled_with_its_group(how: str) -> None:
    """Raise a group whose member refers back to it: as its ``__context__``, or in an attribute (of a nested group's)."""
    member = ValueError("member")
    inner = ExceptionGroup("inner", [member]) if how == "nested" else member
    try:
        raise ExceptionGroup("several", [inner, KeyError("other")])
    except ExceptionGroup as group:
        if how == "context":
            member.__context__ = group  # as raising the member while handling the group leaves it
        else:
            member.group = group  # type: ignore[attr-defined]
        raise


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup exists from Python 3.11")
@pytest.mark.parametrize("how", ["context", "attribute", "nested"])
def test_a_group_its_members_refer_back_to_arrives_as_itself(how: str) -> None:
    # A group cannot be made without its members: made without the arguments that
    # refer back to it, as other exceptions are, it could not be unpickled here, and
    # the task failed with a TaskSerializationError.
    error = failure(functools.partial(member_handled_with_its_group, how))
    assert type(error) is ExceptionGroup and str(error) == "several (2 sub-exceptions)"
    member, other = error.exceptions
    if how == "nested":
        assert type(member) is ExceptionGroup and str(member) == "inner (1 sub-exception)"
        (member,) = member.exceptions
    assert type(member) is ValueError and type(other) is KeyError
    assert (member.__context__ if how == "context" else member.group) is error  # type: ignore[attr-defined]
    mapped = functools.partial(raising_at_item_one, functools.partial(member_handled_with_its_group, how))
    with pytest.raises(ExceptionGroup):
        mp.parallel_map(mapped, range(3), backend="process", chunksize=3, timeout=30)


class ExitsAsItIsPickled:
    """Its pickling calls ``sys.exit(4)``."""

    def __reduce__(self) -> Any:
        raise SystemExit(4)


class ExitsAsItIsPickledError(Exception):
    """An exception whose pickling calls ``sys.exit(4)``."""

    def __reduce__(self) -> Any:
        raise SystemExit(4)


def return_what_exits_as_it_is_pickled() -> ExitsAsItIsPickled:
    return ExitsAsItIsPickled()


def raise_what_exits_as_it_is_pickled() -> None:
    raise ExitsAsItIsPickledError("bad row")


@pytest.mark.timeout(60)
def test_a_result_or_error_whose_pickling_raises_systemexit_fails_its_task_not_its_worker() -> None:
    # Only an Exception was caught as the worker pickled what the task gave: a SystemExit
    # ended the worker, and the task failed as a WorkerCrashedError, with exit code 4.
    mp.configure_process_pool(num_workers=1)
    pid = mp.parallel(backend="process")(os.getpid)().get(timeout=30)
    restarts = mp.get_process_pool_info()["worker_restarts"]  # the pool's, since earlier tests too
    error = failure(return_what_exits_as_it_is_pickled)
    assert type(error) is mp.TaskSerializationError
    assert "could not be pickled to send it back from the worker process: SystemExit: 4" in str(error)
    error = failure(raise_what_exits_as_it_is_pickled)
    assert type(error) is mp.TaskError
    assert str(error).startswith("task ") and "raised ExitsAsItIsPickledError: bad row (SystemExit: 4)" in str(error)
    assert mp.parallel(backend="process")(os.getpid)().get(timeout=30) == pid  # the same worker
    assert mp.get_process_pool_info()["worker_restarts"] == restarts


def initializer_raising_what_exits_as_it_is_pickled() -> None:
    raise ExitsAsItIsPickledError("no model")


@pytest.mark.timeout(60)
def test_an_initializer_error_whose_pickling_raises_systemexit_is_reported_as_that_error() -> None:
    # The worker died of the SystemExit before it reported the error: the pool saw a start
    # that failed with exit code 4, and the initializer's error was never named.
    mp.configure_process_pool(num_workers=1, initializer=initializer_raising_what_exits_as_it_is_pickled)
    try:
        error = failure(functools.partial(abs, -3))
    finally:  # the next tests' workers start without it
        mp.configure_process_pool(initializer=None)
    assert type(error) is mp.WorkerCrashedError
    assert "the worker initializer initializer_raising_what_exits_as_it_is_pickled raised" in str(error)
    assert type(error.__cause__) is mp.TaskError
    assert str(error.__cause__) == "ExitsAsItIsPickledError: no model (it cannot be pickled: SystemExit: 4)"


@pytest.mark.timeout(30)
def test_an_error_class_changed_by_another_thread_as_its_fields_are_read_still_pickles() -> None:
    # The fields an error keeps outside its __dict__ were found by going through each
    # class's __dict__ in Python: another thread setting an attribute of the class
    # meanwhile (a class-level cache a task fills) raised "dictionary changed size
    # during iteration" out of the error's pickling, and the task's error was lost.
    from makeparallel import _remote_errors

    class Coded(Exception):
        __slots__ = ("code",)

    error = Coded("refused")
    error.code = 7
    added: list[str] = []

    def set_a_class_attribute_at_each_line(frame: Any, event: str, arg: object) -> object:
        caller = frame
        while caller is not None and caller.f_code is not _remote_errors._fields.__code__:
            caller = caller.f_back
        if caller is None:
            return None
        if event == "line" and len(added) < 20:
            added.append(f"cached_{len(added)}")
            setattr(Coded, added[-1], len(added))  # as another thread may, at any line
        return set_a_class_attribute_at_each_line

    tracing = sys.gettrace()
    sys.settrace(set_a_class_attribute_at_each_line)
    try:
        fields = _remote_errors._fields(error)
    finally:
        sys.settrace(tracing)
    assert added  # (the reading ran under the trace)
    assert fields["code"] == 7
