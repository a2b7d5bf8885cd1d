"""The framed channel between the parent and a worker: messages and buffers arrive whole and in order.

A read takes at most ``_READ`` bytes, so a frame often straddles two reads, or
many: a burst of messages of every size must still come out as it went in.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading

import pytest

from makeparallel._backends import _channel
from makeparallel._backends._channel import Channel
from makeparallel._backends._socketpair import blocking_socketpair, widen_send_buffer


def test_a_burst_of_messages_and_buffers_of_every_size_arrives_whole_and_in_order() -> None:
    sizes = [0, 1, 7, 100, _channel._READ - 9, _channel._READ, _channel._READ + 1, 3 * _channel._READ + 5, 50, 2]
    sent = [(("item", number, b"m" * size), [bytes([number % 251]) * size]) for number, size in enumerate(sizes * 20)]
    ours, theirs = socket.socketpair()
    writer, reader = Channel(ours), Channel(theirs)
    errors: list[BaseException] = []

    def send_all() -> None:
        try:
            for message, buffers in sent:
                writer.send(message, buffers)
        except BaseException as error:  # pragma: no cover - reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=send_all)
    thread.start()
    try:
        received = []
        for _ in sent:
            message = reader.recv()
            received.append((message, [bytes(reader.recv_frame())]))
        thread.join(30)
        assert not errors
        assert received == sent
        assert not reader.buffered()
    finally:
        ours.close()
        theirs.close()


def test_the_messages_already_read_are_buffered_and_need_no_wait() -> None:
    ours, theirs = socket.socketpair()
    writer, reader = Channel(ours), Channel(theirs)
    try:
        for number in range(3):
            writer.send(("done", number))
        assert reader.recv() == ("done", 0)  # one read took all three
        assert reader.buffered()
        theirs.setblocking(False)  # a read from the socket now would raise BlockingIOError
        assert [reader.recv(), reader.recv()] == [("done", 1), ("done", 2)]
        assert not reader.buffered()
    finally:
        ours.close()
        theirs.close()


SIGPIPE_SCRIPT = """
import os, signal, _socket
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as a command-line tool that ends quietly in a pipeline
from makeparallel._backends._channel import Channel
from makeparallel._backends._socketpair import blocking_socketpair
from makeparallel._backends._template import Template

ours, theirs = blocking_socketpair(_socket.SOCK_STREAM)
theirs.close()  # a worker that died
try:
    Channel(ours).send(("task",), [b"x" * 100_000])
except BrokenPipeError:
    print("BrokenPipeError")

class DeadTemplate:
    pid = None

    def __init__(self):
        self.sock, end = blocking_socketpair(_socket.SOCK_SEQPACKET)
        end.close()

    def exit_code(self, within):
        return -9

template = Template(DeadTemplate())
template.preload()
print(template.alive)
worker_end, _ = blocking_socketpair(_socket.SOCK_STREAM)
print(Template(DeadTemplate()).fork(worker_end, os.open(os.devnull, os.O_RDONLY)).returncode)
"""


@pytest.mark.timeout(60)
def test_send_or_keep_never_waits_and_what_it_keeps_goes_first_and_in_order() -> None:
    # The pool's loop thread sent with sendall: a task larger than the socket's buffers, to a
    # worker that read nothing, held it, and every other worker's results with it.
    ours, theirs = socket.socketpair()
    writer, reader = Channel(ours), Channel(theirs)
    large = bytes(range(256)) * (16 * 1024)  # 4 MiB: more than the buffers of a socket pair hold
    with ours, theirs:
        assert writer.send_or_keep(("first", 1)) and not writer.unsent
        ours.settimeout(0.0)  # any wait in a send below raises BlockingIOError instead
        assert not writer.send_or_keep(("large",), [large]) and writer.unsent
        assert not writer.send_or_keep(("after",)) and not writer.flush()  # no room yet: kept, in order
        ours.settimeout(None)
        received: list[object] = []

        def read_all() -> None:
            received.extend([reader.recv(), reader.recv(), bytes(reader.recv_frame()), reader.recv(), reader.recv()])

        thread = threading.Thread(target=read_all)
        thread.start()
        while not writer.flush():  # as the loop does when the socket has room
            select.select([], [ours], [], 30)
        writer.send(("last",))  # a blocking send goes after what was kept
        thread.join(30)
        assert received == [("first", 1), ("large",), large, ("after",), ("last",)]
        assert not writer.unsent


@pytest.mark.timeout(60)
def test_a_cancel_kept_behind_a_large_message_is_counted_only_once_it_has_gone() -> None:
    # A worker reads its pipe before the next task of its inbox when the count of cancels
    # moves, and starts that task if none is there: counted as it was kept behind part of a
    # large message, a cancel let a worker start 9 of 10 tasks cancelled behind that message.
    from types import SimpleNamespace

    from makeparallel._backends import _process

    class Journal:
        counted = 0

        def cancel_sent(self) -> None:
            self.counted += 1

    ours, theirs = socket.socketpair()
    worker = SimpleNamespace(conn=Channel(ours), send_lock=threading.Lock(), cancels_unsent=0, journal=Journal())
    reader = Channel(theirs)
    with ours, theirs:
        _process._send(worker, ("tasks",), [b"x" * (4 * 2**20)])  # more than the pair's buffers hold
        _process._send_control(worker, ("cancel", 7))
        assert worker.conn.unsent and worker.journal.counted == 0
        received: list[object] = []
        thread = threading.Thread(target=lambda: received.extend([reader.recv(), len(reader.recv_frame()), reader.recv()]))
        thread.start()
        while worker.conn.unsent:  # as the loop does when the pipe has room
            select.select([], [ours], [], 30)
            _process._flush(worker)
        thread.join(30)
        assert received == [("tasks",), 4 * 2**20, ("cancel", 7)] and worker.journal.counted == 1
        _process._send_control(worker, ("cancel", 8))  # with room: counted at once
        assert worker.journal.counted == 2 and reader.recv() == ("cancel", 8)


def test_a_send_to_a_process_that_died_raises_where_the_program_takes_sigpipe_by_default() -> None:
    # A program that set SIGPIPE back to its default was killed by a send to a worker
    # (or a template) that had just died, where a fault must touch one task (4/10).
    result = subprocess.run(
        [sys.executable, "-c", SIGPIPE_SCRIPT], capture_output=True, text=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout.split()) == (0, ["BrokenPipeError", "False", "-9"]), result.stderr


def test_a_send_of_the_room_widen_send_buffer_gives_never_waits_for_the_reader() -> None:
    # The promise a task sent straight from submit() rests on: it never blocks its submitter.
    ours, theirs = (socket.socket(fileno=end.detach()) for end in blocking_socketpair(socket.SOCK_STREAM))
    with ours, theirs:
        room = widen_send_buffer(ours, 32 * 1024)
        ours.setblocking(False)
        ours.send(b"s" * 4096)  # what an idle worker may hold unread: a small control message
        sent = 0
        while sent < room:  # a reader that reads nothing: any wait raises BlockingIOError
            sent += ours.send(memoryview(b"t" * room)[sent:])
        assert sent == room


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        # What it would ask for is less than the system's own buffer, 208 KiB by default.
        ("_SEND_BUFFER", 16 * 1024),
        # Linux sets twice the capped request even below what the socket had: a wmem_max of
        # 16 KiB turned a 208 KiB buffer into 32 KiB, and sends that fitted before waited.
        ("_cap", 16 * 1024),
    ],
    ids=["a buffer larger than it would ask for", "the system's cap is low"],
)
def test_widen_send_buffer_never_narrows_a_buffer(monkeypatch: pytest.MonkeyPatch, setting: str, value: int) -> None:
    from makeparallel._backends import _socketpair

    monkeypatch.setattr(_socketpair, setting, value)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        given = ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        room = widen_send_buffer(ours, 8 * 1024)
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == given
        if sys.platform.startswith("linux"):
            assert room == max(8 * 1024, given * 3 // 4)
