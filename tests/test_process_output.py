"""Output written in a worker process reaches the caller, in order, and none is lost.

``print()`` and writes to ``sys.stdout``/``sys.stderr`` in a task land in the
parent's ``sys.stdout``/``sys.stderr`` as they are when the lines arrive, so
``contextlib.redirect_stdout`` captures them, before the task's result, and a
worker stopped at a timeout still delivers what it wrote. Output C code writes
to file descriptor 1 is not held in the worker's buffers.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import io
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from makeparallel import _runtime
from makeparallel._backends import _process
from makeparallel._handle import cancel_and_stop
from makeparallel.testing import no_retry_waits
from pool_helpers import (
    Flags,
    fresh_process_pool,
    mark_then_wait,
    process_alive,
    send_tasks_ahead,
    the_pool_goes_on_beside,
    wait_for_flag,
    wait_until,
)
from test_process_faults import run_script

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(60),
]

on_process = mp.parallel(backend="process")


def chatty(n: int) -> int:
    print("task line 1 of", n)
    sys.stdout.write("task line 2, written")
    sys.stdout.write(" in pieces\n")
    print("to stderr", n, file=sys.stderr)
    return n


def write_bytes() -> None:
    sys.stdout.buffer.write("bytes, then text: é\n".encode())
    sys.stdout.buffer.flush()


def write_binary(data: bytes) -> None:
    sys.stdout.write("text first\n")
    sys.stdout.buffer.write(data)
    sys.stdout.write("text after\n")


def reconfigured() -> tuple[str, str]:
    sys.stdout.reconfigure(encoding="utf-8", errors="replace")  # type: ignore[union-attr]
    print("after reconfigure")
    return sys.stdout.name, sys.stdout.errors


def reconfigured_in_turn(stream: Any) -> list[Any]:
    """What ``stream`` says after each of the reconfigurations scripts make, or the error one raised."""
    said: list[Any] = [stream.errors]
    for encoding in ("utf-8", "LATIN-1", "locale"):
        try:
            stream.reconfigure(encoding=encoding)
        except LookupError as error:
            said.append(type(error))
        else:
            said += [stream.encoding, stream.errors]
    return said


def stderr_reconfigured_in_turn() -> list[Any]:
    return reconfigured_in_turn(sys.stderr)


def stream_attributes() -> list[tuple[str, str]]:
    return [(stream.name, stream.mode) for stream in (sys.stdout, sys.stderr, sys.stdout.buffer, sys.stderr.buffer)]


def stream_settings() -> list[Any]:
    """What libraries read of the standard streams (click, rich, tqdm, logging handlers), and a write to buffer.raw."""
    sys.stdout.buffer.raw.write(b"raw bytes\n")  # type: ignore[attr-defined]
    sys.stdout.buffer.raw.flush()  # type: ignore[attr-defined]
    return [
        sys.stdout.errors,
        sys.stderr.errors,
        sys.stdout.buffer.raw.name,  # type: ignore[attr-defined]
        sys.stderr.buffer.raw.mode,  # type: ignore[attr-defined]
        sys.stdout.buffer.raw.writable(),  # type: ignore[attr-defined]
        sys.stdin.readable(),
        sys.stdin.read(),
    ]


def write_split_character() -> None:
    encoded = "é€".encode()
    for i in range(len(encoded)):
        sys.stdout.buffer.write(encoded[i : i + 1])  # each byte alone: a character spans writes
    sys.stdout.buffer.write(b"\n")


def write_bytes_in_the_stream_s_encoding(encoding: str) -> str:
    """Write text encoded as ``sys.stdout`` says, after reconfiguring it to ``encoding``; its settings are put back."""
    before = sys.stdout.encoding, sys.stdout.errors
    sys.stdout.reconfigure(encoding=encoding)
    try:
        sys.stdout.buffer.write("café €\n".encode(sys.stdout.encoding, "replace"))
        sys.stdout.flush()
        return sys.stdout.encoding
    finally:
        sys.stdout.reconfigure(encoding=before[0], errors=before[1])


def close_a_wrapper_of_the_buffer() -> str:
    wrapper = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8")
    wrapper.write("through a wrapper\n")
    wrapper.close()  # closes the buffer it wraps, as dropping it would
    return "closed"


def partial_line() -> str:
    print("no newline at the end", end="")
    return "done"


def print_then_hang(flags: Flags) -> None:
    print("a whole line")
    print("a partial line", end="")
    flags.set("printed")
    time.sleep(60)  # stopped at its timeout


def print_from_threads(lines: int) -> int:
    def write(tag: str) -> None:
        for i in range(lines):
            sys.stdout.write(f"{tag}-{i}\n")  # one write: whole (print() makes two, as everywhere)

    threads = [threading.Thread(target=write, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return lines


def print_until_stopped(seconds: float) -> str:
    """Print line after line, as a task that reports as it goes, for ``seconds`` at most."""
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        print("line", count)
        count += 1
    return f"printed {count} lines into nothing"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_task_printing_to_a_stream_whose_reader_is_gone_gets_broken_pipe_error(backend: str) -> None:
    # prog | head -1: on processes the prints were dropped in the parent, and a task
    # that printed until its reader was gone printed on, for good.
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone
    broken = io.TextIOWrapper(io.FileIO(write_end, "w"), line_buffering=True)
    try:
        with contextlib.redirect_stdout(broken), pytest.raises(BrokenPipeError):
            mp.parallel(backend=backend)(print_until_stopped)(30).get(timeout=40)
    finally:
        with contextlib.suppress(OSError):
            broken.close()
    assert on_process(chatty)(2).get(timeout=30) == 2  # the worker goes on: the failure was its task's


def say_hi(i: int) -> int:
    print(f"task {i} says hi")
    return i


@pytest.mark.timeout(60)
def test_a_stream_that_failed_for_a_task_that_ended_fails_no_later_task() -> None:
    # The failure reached the worker after the short task that wrote had ended, and
    # the next task's print raised, though the parent's stream worked again by then.
    mp.configure_process_pool(1)
    assert on_process(say_hi)(0).get(timeout=30) == 0
    closed = io.StringIO()
    closed.close()
    with contextlib.redirect_stdout(closed):
        assert on_process(say_hi)(1).get(timeout=30) == 1  # its line is dropped: it ended before it heard
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert [on_process(say_hi)(i).get(timeout=30) for i in (2, 3, 4)] == [2, 3, 4]
    assert out.getvalue() == "task 2 says hi\ntask 3 says hi\ntask 4 says hi\n"


def test_print_is_captured_by_redirect_stdout_in_order() -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        print("parent before")
        assert on_process(chatty)(7).get(timeout=30) == 7
        print("parent after")
    assert out.getvalue() == "parent before\ntask line 1 of 7\ntask line 2, written in pieces\nparent after\n"
    assert err.getvalue() == "to stderr 7\n"


def test_a_partial_line_arrives_when_the_task_ends() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert on_process(partial_line)().get(timeout=30) == "done"
    assert out.getvalue() == "no newline at the end"


def test_bytes_written_to_the_buffer_arrive_as_text() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        on_process(write_bytes)().get(timeout=30)
    assert out.getvalue() == "bytes, then text: é\n"


def test_bytes_written_to_the_buffer_reach_the_buffer_intact_in_order() -> None:
    # Bytes were decoded as UTF-8 with replacement: a task writing a gzip stream to
    # standard output delivered garbage.
    data = bytes(range(256)) + b"\xff\xfe\n"
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    with contextlib.redirect_stdout(stream):
        on_process(write_binary)(data).get(timeout=30)
    stream.flush()
    assert stream.buffer.getvalue() == b"text first\n" + data + b"text after\n"  # type: ignore[attr-defined]


def print_cafe() -> None:
    print("café ☃")


def test_a_line_the_programs_stream_cannot_encode_arrives_escaped() -> None:
    # Written to an ASCII stream (PYTHONIOENCODING=ascii, say), it was dropped without a word.
    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    with contextlib.redirect_stdout(stream):
        on_process(print_cafe)().get(timeout=30)
    stream.flush()
    assert stream.buffer.getvalue() == b"caf\\xe9 \\u2603\n"  # type: ignore[attr-defined]


def test_a_character_split_across_writes_to_the_buffer_arrives_whole_in_a_text_stream() -> None:
    # Bytes for a stream with no buffer (a StringIO) were decoded write by write.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        on_process(write_split_character)().get(timeout=30)
    assert out.getvalue() == "é€\n"


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_bytes_for_a_stream_with_no_buffer_are_decoded_as_the_task_s_stream_says(encoding: str) -> None:
    # They were decoded as UTF-8 whatever the worker's stream said: under
    # PYTHONIOENCODING=latin-1, a task encoding its text as sys.stdout.encoding
    # says (the bytes a program's stream would write) reached a StringIO as "caf\ufffd".
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert on_process(write_bytes_in_the_stream_s_encoding)(encoding).get(timeout=30) == encoding
    assert out.getvalue() == "café €\n".encode(encoding, "replace").decode(encoding)


def test_a_task_that_closes_the_buffer_leaves_it_open_for_the_next() -> None:
    # One buffer relay per worker: a task that closed a wrapper of it (or dropped one)
    # had every later task on that worker fail with "I/O operation on closed file".
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fresh = mp.parallel(backend="process")
        mp.configure_process_pool(num_workers=1)
        assert fresh(close_a_wrapper_of_the_buffer)().get(timeout=30) == "closed"
        assert fresh(write_split_character)().get(timeout=30) is None
    assert out.getvalue() == "through a wrapper\né€\n"


@pytest.mark.parametrize(
    ("arguments", "error"),
    [({"encoding": "hex"}, LookupError), ({"newline": "bad"}, ValueError), ({"newline": 1}, TypeError)],
)
def test_reconfigure_refuses_what_a_text_stream_refuses(arguments: dict[str, Any], error: type) -> None:
    from makeparallel._backends._output_relay import OutputRelay

    relay = OutputRelay(0, 1, lambda message: None)
    with pytest.raises(error):
        relay.reconfigure(**arguments)
    with pytest.raises(error):
        io.TextIOWrapper(io.BytesIO()).reconfigure(**arguments)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_task_reads_the_name_and_mode_of_its_standard_streams(backend: str) -> None:
    # A worker's relays had a name but no mode, and their buffers neither: code that
    # reads sys.stdout.mode (or sys.stdout.buffer.name) failed with AttributeError there.
    from makeparallel._backends._output_relay import OutputRelay

    relay = OutputRelay(0, 1, lambda message: None)
    assert (relay.mode, relay.buffer.mode, relay.buffer.name) == ("w", "wb", "<stdout>")
    task = on_process(stream_attributes) if backend == "process" else mp.parallel(stream_attributes, backend="thread")
    expected = [("<stdout>", "w"), ("<stderr>", "w"), ("<stdout>", "wb"), ("<stderr>", "wb")]
    with contextlib.redirect_stdout(sys.__stdout__), contextlib.redirect_stderr(sys.__stderr__):
        assert task().get(timeout=30) == expected


def test_a_task_s_standard_streams_say_what_a_program_s_say() -> None:
    # A worker's relays said errors="strict" for stderr too (a program's stderr says
    # "backslashreplace", and its stdout says "surrogateescape" under the C locale),
    # and their buffers had no raw: code that writes to sys.stdout.buffer.raw failed.
    import subprocess

    program = "import sys; print(repr([sys.stdout.errors, sys.stderr.errors]))"
    expected = eval(subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        got = on_process(stream_settings)().get(timeout=30)
    assert got == [*expected, "<stdout>", "wb", True, True, ""]
    assert out.getvalue() == "raw bytes\n"


STREAM_ENCODINGS_SCRIPT = """
import sys
import makeparallel as mp

def encodings():
    return [sys.stdout.encoding, sys.stderr.encoding]

if __name__ == "__main__":
    print(repr([encodings(), mp.parallel(backend="process")(encodings)().get(timeout=30)]))
"""


def test_a_task_s_standard_streams_say_the_program_s_encoding() -> None:
    # The relays said "utf-8" whatever the program's streams said: under
    # PYTHONIOENCODING=ascii a library that picks its characters by the encoding
    # (tqdm's bars) printed characters that arrived escaped.
    proc = run_script(STREAM_ENCODINGS_SCRIPT, variables={"PYTHONIOENCODING": "latin-1"})
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    in_the_program, in_a_worker = eval(out)
    assert in_the_program == ["iso8859-1", "iso8859-1"]
    assert in_a_worker == in_the_program


def test_a_task_reconfigures_its_standard_output() -> None:
    # The relay had no reconfigure(): a module calling sys.stdout.reconfigure(encoding="utf-8")
    # at its top, as many scripts do, failed every task with AttributeError.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert on_process(reconfigured)().get(timeout=30) == ("<stdout>", "replace")
    assert out.getvalue() == "after reconfigure\n"


def test_a_task_s_reconfigured_stream_says_what_a_program_s_would() -> None:
    # A relay kept its errors when given an encoding alone, where a program's stream
    # goes back to "strict", and took encoding="locale" as the encoding's name: it
    # said "locale" where a program's said the locale's encoding ("UTF-8"), and
    # took it on Python 3.10, whose streams raise LookupError for it.
    program_s = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    expected = reconfigured_in_turn(program_s)
    assert on_process(stderr_reconfigured_in_turn)().get(timeout=30) == expected


def test_output_of_a_map_arrives_with_it() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert mp.parallel_map(chatty, range(6), backend="process", chunksize=2) == list(range(6))
    lines = out.getvalue().splitlines()
    for n in range(6):
        assert lines.index(f"task line 1 of {n}") + 1 == lines.index("task line 2, written in pieces", lines.index(f"task line 1 of {n}"))
    assert len(lines) == 12


def test_writes_from_several_threads_of_a_task_all_arrive_whole() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert on_process(print_from_threads)(200).get(timeout=30) == 200
    assert sorted(out.getvalue().splitlines()) == sorted(f"{t}-{i}" for t in "ab" for i in range(200))


def test_output_of_a_worker_stopped_at_a_timeout_is_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its timeout comes once it printed: a real one of a second passed on a busy machine
    # before the task printed its partial line (or anything, as its worker imported this
    # module). And the kill's grace outlasts a busy machine: the SIGTERM reaches a forked
    # worker through its template, which may run a second later; past the grace the handle
    # timed out without the line the worker flushes as it handles the signal.
    monkeypatch.setattr(_process, "_TERMINATE_GRACE", 30.0)
    fresh_process_pool(1)
    flags = Flags(str(tmp_path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        handle = on_process(print_then_hang)(flags, timeout=600)
        assert flags.wait("printed", 30)
        # Its whole line written, its start was read before it: the timeout is not moved on.
        assert wait_until(lambda: out.getvalue() == "a whole line\n", 30)
        time_out_now(handle)
        with pytest.raises(mp.TaskTimeoutError):
            handle.get(timeout=30)
        # The worker flushes at SIGTERM; the handle times out once that is written,
        # so what the task printed is in the redirect when get() raises, as for a result.
        printed = out.getvalue()
    assert printed == "a whole line\na partial line"


@pytest.mark.timeout(90)
def test_a_worker_stopped_at_a_timeout_as_its_output_is_written_times_its_task_out_after_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ended as its first line was still being written, the worker had the rest of its
    # output (the partial line it flushed at its SIGTERM) read and put behind that line;
    # its task timed out at once, its waiter had the error before the line was written,
    # and the line went to whatever sys.stdout was by then.
    monkeypatch.setattr(_process, "_TERMINATE_GRACE", 30.0)  # the handle's deadline waits for the stream
    fresh_process_pool(1)
    flags = Flags(str(tmp_path))
    with blocked_stdout() as stream:
        handle = on_process(print_then_hang)(flags, timeout=600)
        assert flags.wait("printed", 30) and stream.writing.wait(30)  # (its start was read before its line)
        [stopped] = handle._backend._workers
        time_out_now(handle)
        assert wait_until(lambda: stopped not in handle._backend._workers, 30)
        assert on_process(os.getpid)().get(timeout=30) != stopped.process.pid  # the loop went past its end
        assert not handle.done()  # its output is still being written
        stream.release.set()
        with pytest.raises(mp.TaskTimeoutError):
            handle.get(timeout=30)
        assert stream.getvalue() == "a whole line\na partial line"


def deaf_to_sigterm_until_go(flags: Flags) -> None:
    """Ignore ``SIGTERM`` (the worker outlives its timeout's kill) until flag ``go``, then die of it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    flags.set("deaf")
    assert flags.wait_for_release("go", 50)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def test_a_cancel_while_a_timed_out_worker_is_stopped_ends_the_task_timed_out_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past its deadline the handle waits (at most the kill's grace) for the stopped worker's
    # output; a cancel then ends it as its own timeout had, and wakes its waiter now.
    monkeypatch.setattr(_process, "_TERMINATE_GRACE", 50.0)  # the window stays open for the test
    fresh_process_pool(1)
    assert on_process(say_hi)(0).get(timeout=30) == 0  # its one worker has imported this module
    flags = Flags(str(tmp_path))
    try:
        handle = on_process(deaf_to_sigterm_until_go)(flags, timeout=2.0)
        assert flags.wait("deaf", 30)
        assert wait_until(handle._timing_out, 30)  # its deadline passed: its worker is being stopped
        woken: list[BaseException | None] = []

        def wait() -> None:
            try:
                woken.append(handle.exception())
            except BaseException as error:  # noqa: BLE001  # a cancellation raised: looked at below
                woken.append(error)

        waiter = threading.Thread(target=wait)
        waiter.start()
        assert wait_until(lambda: bool(handle._waiters), 30)
        assert handle.cancel()
        waiter.join(30)  # woken by the cancel, not at the end of the grace
        assert not waiter.is_alive() and isinstance(woken[0], mp.TaskTimeoutError), woken
        assert "cancelled" not in str(woken[0]), woken
    finally:
        flags.set("go")


def test_a_timed_out_task_whose_worker_never_ends_times_out_at_the_end_of_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backend never learns that the worker stopped (here it is not even asked to stop
    # it): the handle's deadline times it out at the end of the grace, so no waiter hangs.
    monkeypatch.setattr(_process, "_TERMINATE_GRACE", 0.5)
    fresh_process_pool(1)
    assert on_process(say_hi)(0).get(timeout=30) == 0
    backend = _runtime.get_backend("process")
    monkeypatch.setattr(backend, "_abandoned", lambda handle, force=False: None)
    flags = Flags(str(tmp_path))
    try:
        handle = on_process(wait_for_flag)(flags, "go", timeout=1.0)
        with pytest.raises(mp.TaskTimeoutError):
            handle.get(timeout=30)
        assert handle.done(), "the wait gave up: the handle never timed out"
    finally:
        flags.set("go")
    assert on_process(say_hi)(1).get(timeout=30) == 1


def fail_after_flag(flags: Flags, name: str) -> str:
    assert flags.wait(name, 30)
    raise ValueError("ended after its deadline")


@pytest.mark.parametrize("task", [wait_for_flag, fail_after_flag], ids=["success", "failure"])
def test_an_outcome_read_after_the_deadline_before_the_stop_times_the_task_out(
    task: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The deadline sets the timeout aside and the worker's stop follows, outside the lock: a
    # result read in between was settled as the task's outcome, a failure retried with the
    # timeout still waiting. The timeout came first: the outcome is dropped, as one read after.
    monkeypatch.setattr(_process, "_TERMINATE_GRACE", 50.0)
    fresh_process_pool(1)
    assert on_process(say_hi)(0).get(timeout=30) == 0
    backend = _runtime.get_backend("process")
    monkeypatch.setattr(backend, "_abandoned", lambda handle, force=False: None)  # the stop never comes
    flags = Flags(str(tmp_path))
    try:
        handle = on_process(task)(flags, "go", timeout=0.5)
        assert wait_until(handle._timing_out, 30)
        flags.set("go")  # the task ends, its outcome sent
        with pytest.raises(mp.TaskTimeoutError):
            handle.get(timeout=30)
    finally:
        flags.set("go")
    assert on_process(say_hi)(1).get(timeout=30) == 1


C_LEVEL_SCRIPT = """
import os, signal, sys
import makeparallel as mp

os.environ.pop("PYTHONUNBUFFERED", None)  # else the workers' C stdio is unbuffered too

def c_printf():
    import ctypes
    ctypes.CDLL(None).printf(b"written by C\\n")  # held in C's stdio buffer: fd 1 is a pipe
    return os.getpid()

pid = mp.parallel(backend="process")(c_printf)().get(timeout=30)
os.kill(pid, signal.SIGKILL)  # nothing the worker still held could be written now
mp.shutdown(10)
print("parent done", flush=True)
"""


def test_output_written_by_c_code_is_not_held_in_the_worker() -> None:
    proc = run_script(C_LEVEL_SCRIPT)
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    assert "written by C" in out, (out, err)


class BlockedStream(io.StringIO):
    """A ``sys.stdout`` whose reader does not read: a write waits until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.writing, self.release = threading.Event(), threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        assert self.release.wait(30)
        return super().write(text)


@contextlib.contextmanager
def blocked_stdout() -> Iterator[BlockedStream]:
    """``sys.stdout`` as a :class:`BlockedStream` inside the block, released as the block ends, however it ends."""
    stream = BlockedStream()
    try:
        with contextlib.redirect_stdout(stream):
            yield stream
    finally:
        stream.release.set()


def print_a_line() -> int:
    print("a line")
    return os.getpid()


@pytest.mark.timeout(60)
def test_a_stream_that_blocks_holds_only_the_task_that_printed() -> None:
    # The pool's loop thread wrote the line itself: blocked there, it read no other
    # worker's result and kept no task's deadline. Now the task that printed waits, as
    # a thread task's print() would, and its result comes after its line.
    mp.configure_process_pool(2)
    with blocked_stdout() as stream:
        printing = on_process(print_a_line)()
        assert stream.writing.wait(30)
        the_pool_goes_on_beside(printing)
        stream.release.set()
        pid = printing.get(timeout=30)
    assert stream.getvalue() == "a line\n" and pid != os.getpid()


def print_forever() -> None:
    while True:
        print("a line")


@pytest.mark.timeout(60)
def test_a_worker_stopped_at_its_timeout_as_it_prints_into_a_blocked_stream_is_replaced() -> None:
    # The pool reads nothing of a worker whose output it is writing, its end of file
    # included: one killed at its timeout there was never replaced, and counted busy.
    mp.configure_process_pool(1)
    with blocked_stdout() as stream:
        # A timeout the worker's first line comes well before, even on a loaded machine
        # (at 0.5 s, a worker started late was stopped before it printed).
        with pytest.raises(mp.TaskTimeoutError):
            mp.parallel(backend="process", timeout=5)(print_forever)().get(timeout=30)
        assert stream.writing.is_set()
        assert on_process(os.getpid)().get(timeout=30) != os.getpid()  # on its replacement, the stream still blocked


def log_and_write_to_stderr(logger: str) -> int:
    import logging

    logging.getLogger(logger).warning("a record")
    print("to stderr", file=sys.stderr)
    return os.getpid()


@pytest.mark.timeout(60)
def test_a_blocked_stdout_holds_neither_another_workers_records_nor_its_stderr() -> None:
    # One thread wrote every worker's lines and records: behind a line blocked on
    # stdout, another worker's log record and stderr waited too, and its result.
    mp.configure_process_pool(2)
    errors, records = io.StringIO(), []
    name = f"test_process_output.{os.getpid()}.{time.monotonic_ns()}"
    logger = logging.getLogger(name)
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        with blocked_stdout() as stream, contextlib.redirect_stderr(errors):
            printing = on_process(print_a_line)()
            assert stream.writing.wait(30)
            pid = on_process(log_and_write_to_stderr)(name).get(timeout=30)
            assert [record.process for record in records] == [pid] and errors.getvalue() == "to stderr\n"
            assert not printing.done()
            stream.release.set()
            assert printing.get(timeout=30) not in (pid, os.getpid())
    finally:
        logger.removeHandler(handler)


def print_then_crash() -> None:
    print("a line")
    sys.stdout.flush()
    os._exit(3)


@pytest.mark.timeout(60)
def test_a_worker_that_crashes_as_its_output_is_written_fails_its_task_after_its_output() -> None:
    # Its exit came while its line was written: taken out of the pool then, its task
    # failed before the line was written, and lines it had sent behind it were lost (a
    # worker recycled by max_tasks_per_child failed its task as crashed the same way).
    mp.configure_process_pool(2, prestart=True)
    assert wait_until(lambda: len(mp.get_process_pool_info()["worker_pids"]) == 2, 30)
    pids = mp.get_process_pool_info()["worker_pids"]
    with blocked_stdout() as stream:
        crashing = on_process(print_then_crash)()
        assert stream.writing.wait(30)
        assert wait_until(lambda: not all(os.path.exists(f"/proc/{pid}") for pid in pids), 30)  # exited, reaped
        [crashed] = [pid for pid in pids if not os.path.exists(f"/proc/{pid}")]
        for _ in range(2):  # the pool looks again meanwhile
            assert on_process(os.getpid)().get(timeout=30) not in (crashed, os.getpid())
        assert not crashing.done()
        stream.release.set()
        with pytest.raises(mp.WorkerCrashedError, match="exit code 3"):
            crashing.get(timeout=30)
    assert stream.getvalue() == "a line\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("template", [True, False], ids=["forked from the template", "fresh interpreters"])
def test_a_worker_that_crashes_as_its_output_is_written_is_replaced_at_once(
    template: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It kept its place in the pool until the stream was read: a pool of one ran no
    # other task meanwhile, where a thread blocked in print() holds only itself.
    if not template:
        monkeypatch.setattr(_process, "template_available", lambda: False)
    fresh_process_pool(1)
    restarts = mp.get_process_pool_info()["worker_restart_reasons"].get("crashed", 0)
    try:
        with blocked_stdout() as stream:
            crashing = on_process(print_then_crash)()
            assert stream.writing.wait(30)
            assert on_process(os.getpid)().get(timeout=30) != os.getpid()  # on its replacement
            assert not crashing.done()
            stream.release.set()
            with pytest.raises(mp.WorkerCrashedError, match="exit code 3"):
                crashing.get(timeout=30)
        assert stream.getvalue() == "a line\n"
        info = mp.get_process_pool_info()
        assert info["worker_restart_reasons"].get("crashed", 0) == restarts + 1
        assert wait_until(lambda: len(mp.get_process_pool_info()["worker_pids"]) == 1, 30)
    finally:
        if not template:
            fresh_process_pool(1)  # the next tests' workers are forked again


@pytest.mark.timeout(90)
@pytest.mark.parametrize("ending", ["crashed", "recycled"])
def test_workers_that_end_as_their_output_is_written_are_each_replaced(ending: str) -> None:
    # Each still counted as a recycled worker finishing its tasks: a pool of one started
    # one replacement, and no task ran once that one had ended too.
    mp.configure_process_pool(1, max_tasks_per_child=1 if ending == "recycled" else None)
    task = on_process(print_then_crash if ending == "crashed" else print_a_line)
    try:
        with blocked_stdout() as stream:
            ended = [task(), task()]  # the second on the first one's replacement
            assert wait_until(lambda: all_exited(ended), 30)
            assert on_process(os.getpid)().get(timeout=30) in mp.get_process_pool_info()["worker_pids"]
            stream.release.set()
            for handle in ended:
                if ending == "crashed":
                    with pytest.raises(mp.WorkerCrashedError):
                        handle.get(timeout=30)
                else:
                    assert handle.get(timeout=30) != os.getpid()
        assert stream.getvalue() == "a line\n" * 2
    finally:
        mp.configure_process_pool(max_tasks_per_child=None)


def all_exited(handles: list[mp.AsyncHandle[Any]]) -> bool:
    """Whether the worker of each of ``handles`` has ended while its output waits to be written."""
    backend = handles[0]._backend
    with backend._lock:
        return sum(1 for w in backend._workers if w.exited) == len(handles)


def print_then_crash_at(flags: Flags, name: str) -> None:
    print("a line")
    sys.stdout.flush()
    assert flags.wait_for_release(name)
    os._exit(3)


@pytest.mark.timeout(60)
def test_tasks_sent_ahead_to_a_worker_that_crashes_as_its_output_is_written_run_at_once(tmp_path: Path) -> None:
    # They waited with the dead worker until the stream was read, while tasks submitted
    # after them ran; and a forced cancel of its task had the pool kill it again,
    # counted as cancelled, its loop spinning meanwhile.
    mp.configure_process_pool(1)
    send_tasks_ahead()
    flags = Flags(str(tmp_path))
    restarts = collections.Counter(mp.get_process_pool_info()["worker_restart_reasons"])
    try:
        with blocked_stdout() as stream:
            crashing = on_process(print_then_crash_at)(flags, "crash")
            behind = [on_process(abs)(-i) for i in range(4)]
            backend = crashing._backend
            assert stream.writing.wait(30)  # it runs
            worker = next(w for w in backend._workers if crashing in w.outstanding)
            assert wait_until(lambda: sum(h in worker.outstanding for h in behind) >= 2, 30)  # sent ahead
            pid = worker.process.pid
            flags.set("crash")
            assert [h.get(timeout=30) for h in behind] == [0, 1, 2, 3]  # on its replacement
            assert pid not in mp.get_process_pool_info()["worker_pids"]
            assert crashing.cancel(force=True) and not worker.killing
            stream.release.set()
        def counted() -> tuple[int, int]:
            after = mp.get_process_pool_info()["worker_restart_reasons"]
            return after.get("crashed", 0) - restarts["crashed"], after.get("cancelled", 0) - restarts["cancelled"]

        assert wait_until(lambda: counted() == (1, 0), 30)  # once it is reaped
        assert worker not in backend._workers
        assert stream.getvalue() == "a line\n"
    finally:
        flags.set("teardown")


@pytest.mark.timeout(60)
def test_a_worker_that_crashed_as_its_output_was_written_before_a_shutdown_reports_its_crash() -> None:
    # Its task failed with ShutdownError, "still running when makeparallel shut down",
    # though the pool knew its worker had ended before.
    mp.configure_process_pool(1)
    try:
        with blocked_stdout() as stream:
            crashing = on_process(print_then_crash)()
            assert stream.writing.wait(30) and wait_until(lambda: all_exited([crashing]), 30)
            assert mp.shutdown(timeout_secs=0.5) is False  # its line still waits
            stream.release.set()
            with pytest.raises(mp.WorkerCrashedError, match="exit code 3"):
                crashing.get(timeout=30)
            assert wait_until(lambda: stream.getvalue() == "a line\n", 30)  # (shut down, it did not wait for it)
    finally:
        mp.reset_shutdown()


def print_then_end_or_wait(flags: Flags, ending: str) -> str:
    """Its first attempt prints a line, reports progress, then returns or crashes; a later one says so and waits for "retry-go"."""
    if not flags.is_set("first"):
        flags.set("first")
        print("a line")
        sys.stdout.flush()
        mp.report_progress(0.5, "first attempt")
        if ending == "crashed":
            os._exit(3)
        return "first attempt"
    flags.set("retry", str(os.getpid()))
    assert flags.wait_for_release("retry-go")
    return "retry"


def time_out_now(handle: mp.AsyncHandle[Any]) -> None:
    """Have the attempt ``handle`` runs meet its timeout now, as if it had started that long ago."""
    from makeparallel import _deadlines

    with handle._backend._lock:
        handle._started_at -= handle._timeout  # type: ignore[operator]
    _deadlines.schedule(handle, time.perf_counter(), weakly=True)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("after", ["returned", "crashed", "cancelled with force", "timed out", "stopped as a whole"])
def test_an_attempt_retried_as_its_worker_ended_is_not_the_retrys(tmp_path: Path, after: str) -> None:
    # The attempt timed out after its worker had ended on its own (recycled, or crashed),
    # its line still being written: there was nothing to kill, and the pool kept no mark
    # that the attempt was over. Its late progress and result then reached the retry as it
    # ran, or its worker's crash failed it; a forced cancel, the retry's own timeout, or
    # its stop with a group that failed, found the ended worker first and killed none,
    # the retry running on.
    mp.configure_process_pool(1, max_tasks_per_child=1)
    flags = Flags(str(tmp_path))
    policy = mp.Retry(on=mp.TaskTimeoutError, attempts=2, timeout=None)
    task = mp.parallel(backend="process", timeout=600, retry=policy)(print_then_end_or_wait)
    ending = "crashed" if after == "crashed" else "returned"
    try:
        with blocked_stdout() as stream, no_retry_waits():
            handle = task(flags, ending)
            assert stream.writing.wait(30) and wait_until(lambda: all_exited([handle]), 30)
            backend = handle._backend
            [ended] = [w for w in backend._workers if w.exited]
            time_out_now(handle)  # (a real timeout would race the worker's end)
            assert flags.wait("retry", 30)
            pid = int(flags.read("retry"))
            if after in ("returned", "crashed"):
                stream.release.set()
                assert wait_until(lambda: ended not in backend._workers, 30)  # its result or crash read
                assert not handle.done()
                assert (handle.get_progress(), handle.get_progress_message()) == (0.0, None)
                flags.set("retry-go")
                assert handle.get(timeout=30) == "retry" and handle.attempts == 2
                return
            if after == "cancelled with force":
                assert handle.cancel(force=True)
            elif after == "stopped as a whole":
                assert cancel_and_stop([handle]) == 1  # what a group that failed, or Ctrl-C in gather(), does
            else:
                time_out_now(handle)
                with pytest.raises(mp.TaskTimeoutError):
                    handle.get(timeout=30)
            assert wait_until(lambda: not process_alive(pid), 30)  # the retry's worker, not the one that ended
    finally:
        flags.set("teardown")
        mp.configure_process_pool(max_tasks_per_child=None)


def print_then_wait_to_be_stopped(flags: Flags) -> None:
    """Prints a line, then waits until its worker is stopped (or the test's teardown)."""
    print("a line")
    sys.stdout.flush()
    assert flags.wait_for_release("teardown", 60)


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("ending", "cancelled"),
    [
        ("killed", "in the retry's wait"),
        ("returned", "in the retry's wait"),
        ("crashed", "in the retry's wait"),
        ("returned", "before it ended"),
        ("crashed", "as the retry runs"),
    ],
)
def test_cancel_with_timeout_sees_the_end_of_an_attempt_retried(tmp_path: Path, ending: str, cancelled: str) -> None:
    # What the worker of an attempt that timed out and was retried still sends is dropped;
    # with it went the mark that the attempt's code had returned, as its result was read or
    # its worker ended. Cancelled as it waited to retry, the task had cancel_with_timeout()
    # wait its whole timeout and say that its code still ran. Once the retry runs, its code
    # is the one waited for, whatever the late attempt does.
    flags = Flags(str(tmp_path))
    wait = 0.0 if cancelled == "as the retry runs" else 600.0
    policy = mp.Retry(on=mp.TaskTimeoutError, attempts=2, timeout=None, wait_initial=wait, wait_max=wait, wait_jitter=0.0)
    try:
        if ending == "killed":  # by the pool, at its timeout
            mp.configure_process_pool(1)
            handle = mp.parallel(backend="process", timeout=1.0, retry=policy)(print_then_wait_to_be_stopped)(flags)
            assert wait_until(lambda: handle.status == "waiting to retry", 30)
            assert handle.cancel_with_timeout(30) is True
            return
        # Its worker ends on its own as its line waits to be written: its end comes once that is.
        mp.configure_process_pool(1, max_tasks_per_child=1)
        task = mp.parallel(backend="process", timeout=600, retry=policy)(print_then_end_or_wait)
        with blocked_stdout() as stream:
            handle = task(flags, ending)
            assert stream.writing.wait(30) and wait_until(lambda: all_exited([handle]), 30)
            backend = handle._backend
            [ended] = [w for w in backend._workers if w.exited]
            time_out_now(handle)
            if cancelled == "as the retry runs":
                assert flags.wait("retry", 30)
                stream.release.set()
                assert wait_until(lambda: ended not in backend._workers, 30)  # its crash read
                assert handle.cancel_with_timeout(0.05) is False  # the retry waits for "retry-go"
                flags.set("retry-go")
                assert handle.cancel_with_timeout(30) is True
                return
            assert wait_until(lambda: handle.status == "waiting to retry", 30)
            if cancelled == "before it ended":
                assert handle.cancel()
            stream.release.set()
            assert handle.cancel_with_timeout(30) is True
    finally:
        flags.set("teardown")
        mp.configure_process_pool(max_tasks_per_child=None)


def print_then_exit_once(folder: str) -> None:
    """An initializer: the first worker's prints a line, then ends its process."""
    marker = os.path.join(folder, "first")
    if not os.path.exists(marker):
        open(marker, "w").close()
        print("starting")
        sys.stdout.flush()
        os._exit(3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prestart", [False, True])
def test_a_task_held_for_a_worker_that_ends_as_its_initializer_output_is_written_runs_on_another(
    tmp_path: Path, prestart: bool
) -> None:
    # Held for the dead worker, it waited for the stream: no replacement started, or
    # one started and stayed idle.
    try:
        with blocked_stdout() as stream:
            mp.configure_process_pool(1, initializer=print_then_exit_once, initargs=(str(tmp_path),), prestart=prestart)
            assert on_process(os.getpid)().get(timeout=30) != os.getpid()
            stream.release.set()
            assert wait_until(lambda: stream.getvalue() == "starting\n", 30)  # written once the stream is read
    finally:
        mp.configure_process_pool(initializer=None)


@pytest.mark.timeout(60)
def test_a_forced_cancel_behind_output_being_written_stops_the_task_that_runs(tmp_path: Path) -> None:
    # A result read behind a line still being written waits, and the tasks sent behind it
    # run meanwhile: the pool took the first of a worker's tasks for the one it ran. A
    # forced cancel of the task that had ended killed the next one (which then ran
    # twice), and one of the task that ran did not stop it.
    mp.configure_process_pool(1)
    flags = Flags(str(tmp_path))
    restarts = collections.Counter(mp.get_process_pool_info()["worker_restart_reasons"])
    try:
        for name in ("ended", "running"):
            send_tasks_ahead()  # (the last phase's task took a while)
            with blocked_stdout() as stream:
                printed = on_process(print_a_line)()
                task = on_process(mark_then_wait)(flags, name)
                behind = [on_process(abs)(-i) for i in range(4)]
                assert stream.writing.wait(30) and flags.wait(name, 30)  # printed's result waits; task runs
                if name == "ended":
                    assert printed.cancel(force=True)
                    flags.set(f"{name}-go")
                    stream.release.set()
                    assert task.get(timeout=30) == name  # not killed, and run once
                    assert flags.read(name) == "started\n"
                else:
                    assert task.cancel(force=True)
                    assert on_process(abs)(-7).get(timeout=30) == 7  # on a new worker, the stream still blocked
                    stream.release.set()
                    assert printed.get(timeout=30) != os.getpid()
                assert [h.get(timeout=30) for h in behind] == [0, 1, 2, 3]
        restarts["cancelled"] += 1  # the second phase's alone
        assert collections.Counter(mp.get_process_pool_info()["worker_restart_reasons"]) == restarts
    finally:
        flags.set("teardown")


def mark_and_return(flags: Flags, name: str) -> str:
    flags.set(name)
    return name


@pytest.mark.timeout(60)
def test_a_shutdown_as_output_is_written_gives_the_tasks_that_ended_their_results() -> None:
    # Their results waited in the pipe behind the line: stopped without reading them, the
    # tasks that had ended failed as never started, and a program that submits those
    # again ran them twice.
    mp.configure_process_pool(1)
    send_tasks_ahead()
    with contextlib.ExitStack() as stack:
        flags = Flags(stack.enter_context(tempfile.TemporaryDirectory()))
        stream = BlockedStream()
        stack.callback(stream.release.set)
        with contextlib.redirect_stdout(stream):
            printed = on_process(print_a_line)()
            ended = on_process(mark_and_return)(flags, "ended")
            running = on_process(mark_then_wait)(flags, "running")
            queued = [on_process(abs)(-i) for i in range(4)]  # a queue: the pool sends those above ahead
            assert stream.writing.wait(30) and flags.wait("ended", 30) and flags.wait("running", 30)
            assert mp.shutdown(timeout_secs=0.5) is False
        assert printed.get(timeout=30) != os.getpid() and ended.get(timeout=30) == "ended"
        with pytest.raises(mp.ShutdownError, match="still running"):
            running.get(timeout=30)
        for handle in queued:
            with pytest.raises(mp.ShutdownError, match="had not started"):
                handle.get(timeout=30)
        flags.set("teardown")
