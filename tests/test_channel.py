"""The framed channel between the parent and a worker: messages and buffers arrive whole and in order.

A read takes at most ``_READ`` bytes, so a frame often straddles two reads, or
many: a burst of messages of every size must still come out as it went in.
"""

from __future__ import annotations

import socket
import threading

from makeparallel._backends import _channel
from makeparallel._backends._channel import Channel


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
