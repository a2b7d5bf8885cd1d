"""``print()`` in a worker process reaches the caller's ``sys.stdout``, in order, and is never lost.

A worker's ``sys.stdout`` and ``sys.stderr`` are replaced by :class:`OutputRelay`
streams. Each complete line is sent to the parent at once, on the pipe that
carries the task's log records and result, so that it arrives before the
result and in the order it was written; the parent writes it to its own
``sys.stdout`` or ``sys.stderr`` *as they are then*, so
``contextlib.redirect_stdout`` around the wait captures it. A partial line is
sent when the stream is flushed, when the task ends, and when the worker is
terminated (its ``SIGTERM`` handler flushes first).

Bytes written to ``sys.stdout.buffer`` travel as bytes, in order with the
text, and the parent writes them to its stream's ``buffer`` (a task that
writes a gzip stream to standard output delivers it intact); where its
stream has none (a ``StringIO``), they are decoded in the encoding the
worker's stream said as they were written (the program's, or what the task
set with ``reconfigure()``). Like a real
console stream, a relay has a ``name`` and a ``mode`` (its ``buffer`` too,
and that buffer a ``raw``, itself: nothing is held back), the ``errors`` of
the stream it replaced, ``line_buffering`` true (a line is sent as it is
complete, a pipe's ``False`` would say it waits), and ``reconfigure()``, which a script calls at its top
(``sys.stdout.reconfigure(encoding="utf-8")``): the text is relayed as
text, and the parent's stream encodes it, so it changes nothing but what
the relay reports.

Cost: one message per line written (a few microseconds); a task that prints
hundreds of thousands of lines should log or return its text instead.

Where the parent's stream fails (its reader gone: ``prog | head``; its
descriptor closed by a daemon), the parent tells the task that wrote, and
from then on each write to the relay raises that error (``BrokenPipeError``)
until the task ends, as a ``print()`` on a thread would: a task that prints
until its reader is gone stops, where it printed on into nothing. The writes
made in between are dropped: a busy worker reads the message once its task
has run for 20 ms (``_WATCH_AFTER``), so a shorter task never hears of it. A
message for a task that has ended is dropped too: the next task writes to
the parent's stream again, which may work by then.

Output written by C code or by child processes straight to file descriptors 1
and 2 goes to the parent's own descriptors, which the worker inherits; the
worker flushes C's ``stdio`` buffers after every task, so none is held back.
A process the task forks writes there too, with its copy of these streams:
the pipe is the worker's alone (``_process_worker``).
"""

from __future__ import annotations

import codecs
import io
import sys
import threading
from collections.abc import Callable

from ._libc import libc_call

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["OutputRelay", "flush_c_stdio", "write_relayed"]

STREAMS = ("stdout", "stderr")


class OutputRelay(io.TextIOBase):
    """A text stream that sends what is written to it, a line at a time, with ``send``."""

    def __init__(
        self, stream: int, fileno: int, send: Callable[[tuple[Any, ...]], None], replaced: Any = None
    ) -> None:
        """Relay stream ``stream`` (0 stdout, 1 stderr) with ``send``; ``fileno`` is the worker's own descriptor.

        ``encoding`` and ``errors`` are those of ``replaced``, the stream the
        relay takes the place of: what Python chose for this program, so code
        that reads them sees a program's (``PYTHONIOENCODING``'s or the
        locale's encoding; ``"backslashreplace"`` for stderr, and
        ``"surrogateescape"`` for stdout under the C locale); else ``"utf-8"``
        and ``"strict"``. A library picks its characters by the encoding
        (tqdm's bars, rich's boxes): told ``"utf-8"`` under
        ``PYTHONIOENCODING=ascii``, it printed characters the program's
        stream could only show escaped. ``line_buffering`` is ``True`` whatever the replaced
        stream said (``False`` for a pipe): each complete line *is* sent at once.
        """
        super().__init__()
        self._stream = stream  # 0 stdout, 1 stderr
        self._fileno = fileno
        self._send = send
        self._pending: list[str] = []
        self._failure: tuple[int | None, str] | None = None  # how the parent's stream failed: (errno, message)
        self._lock = threading.Lock()  # the threads of a task may print at once
        self._encoding = getattr(replaced, "encoding", None) or "utf-8"
        self._errors = getattr(replaced, "errors", None) or "strict"
        self._line_buffering = True  # a whole line is sent at once
        self._write_through = False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    @property
    def errors(self) -> str:  # type: ignore[override]
        return self._errors

    @property
    def name(self) -> str:
        return f"<{STREAMS[self._stream]}>"

    @property
    def mode(self) -> str:  # a console stream's, which code that picks text or bytes reads
        return "w"

    @property
    def line_buffering(self) -> bool:
        return self._line_buffering

    @property
    def write_through(self) -> bool:
        return self._write_through

    def reconfigure(
        self,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        line_buffering: bool | None = None,
        write_through: bool | None = None,
    ) -> None:
        """As ``io.TextIOWrapper.reconfigure``; the text is relayed as text, whatever the encoding said.

        As there, an ``encoding`` given without ``errors`` sets them back to
        ``"strict"``, and ``"locale"`` (Python 3.11 on) stands for the
        locale's encoding, which the stream then says.

        Raises:
            LookupError: ``encoding`` names no text encoding (``"locale"`` on Python 3.10).
            ValueError: ``newline`` is none of ``None``, ``""``, ``"\\n"``, ``"\\r"`` and ``"\\r\\n"``.
            TypeError: an argument is not of its type.
        """
        if encoding is not None:
            if not isinstance(encoding, str):
                raise TypeError(f"reconfigure() argument 'encoding' must be str or None, not {type(encoding).__name__}")
            if encoding == "locale" and sys.version_info >= (3, 11):
                import locale  # a worker imports it only for this

                encoding = locale.getencoding()
            elif not getattr(codecs.lookup(encoding), "_is_text_encoding", True):
                raise LookupError(f"{encoding!r} is not a text encoding")
            errors = errors or "strict"
        if errors is not None and not isinstance(errors, str):
            raise TypeError(f"reconfigure() argument 'errors' must be str or None, not {type(errors).__name__}")
        if newline is not None and not isinstance(newline, str):
            raise TypeError(f"reconfigure() argument 'newline' must be str or None, not {type(newline).__name__}")
        if newline not in (None, "", "\n", "\r", "\r\n"):
            raise ValueError(f"illegal newline value: {newline!r}")
        self._encoding = encoding or self._encoding
        self._errors = errors or self._errors
        if line_buffering is not None:
            self._line_buffering = bool(line_buffering)
        if write_through is not None:
            self._write_through = bool(write_through)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self) -> _BinaryRelay:
        """Bytes written here are relayed as bytes, in order with the text; one a task closes is its own."""
        return _BinaryRelay(self)

    def fileno(self) -> int:
        """The worker's own descriptor: what C code and child processes write to."""
        return self._fileno

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self._failure is not None:  # (a test, not a call, on every write)
            _raise(self._failure)
        with self._lock:
            self._pending.append(text)
            if "\n" in text:
                self._send_pending_locked()
        return len(text)

    def flush(self) -> None:
        if not self._pending:
            return  # after every task: nothing written is the common case, and needs no lock
        if self._failure is not None:
            self._pending.clear()  # as a stream's buffer is, on a failed flush
            _raise(self._failure)
        with self._lock:
            if self._pending:
                self._send_pending_locked()

    def write_bytes(self, data: bytes) -> None:
        """Relay ``data`` as bytes, after the text written before it, with the encoding this stream says.

        A parent's stream with no buffer (a ``StringIO``) gets them decoded
        so: a task that encodes its text as ``sys.stdout.encoding`` says
        (``PYTHONIOENCODING=latin-1``) wrote bytes that, decoded as UTF-8,
        arrived as ``"caf\\ufffd"``.
        """
        if self._failure is not None:
            _raise(self._failure)
        with self._lock:
            if self._pending:
                self._send_pending_locked()
            self._relay(data, self._encoding)

    def fail(self, code: int | None, message: str) -> None:
        """The parent's stream failed so (``errno`` ``code``, or a closed file's ``ValueError``): every later write raises it.

        Until the task ends: ``message`` empty says the next may write again,
        and the parent says so once more if its stream still fails.
        """
        self._failure = (code, message) if message else None

    def _send_pending_locked(self) -> None:
        text = "".join(self._pending)
        self._pending.clear()
        self._relay(text)

    def _relay(self, output: str | bytes, *encoding: str) -> None:
        try:
            self._send(("output", self._stream, output, *encoding))
        except OSError:
            pass  # the parent is gone: nobody to print to


def _raise(failure: tuple[int | None, str]) -> NoReturn:
    """Raise how the parent's stream failed: ``OSError(errno, message)`` (``BrokenPipeError`` for ``EPIPE``), else ``ValueError``."""
    code, message = failure
    raise ValueError(message) if code is None else OSError(code, message)


class _BinaryRelay(io.RawIOBase):
    """``sys.stdout.buffer`` of a worker: what some libraries write bytes to."""

    def __init__(self, text: OutputRelay) -> None:
        super().__init__()
        self._text = text

    @property
    def name(self) -> str:
        return self._text.name

    @property
    def mode(self) -> str:
        return "wb"

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._text.write_bytes(bytes(view))
        return view.nbytes

    def flush(self) -> None:
        self._text.flush()

    def fileno(self) -> int:
        return self._text.fileno()

    @property
    def raw(self) -> _BinaryRelay:
        """Itself: a console stream's buffer has a raw stream below it, and this one holds nothing back."""
        return self


def write_relayed(
    stream: int, text: str | bytes, decoders: dict[int, Any], encoding: str = "utf-8"
) -> tuple[int | None, str] | None:
    """In the parent: write ``text`` to the current ``sys.stdout`` (0) or ``sys.stderr`` (1).

    Returns how the stream failed, for the worker's relay (:meth:`OutputRelay.fail`):
    ``(errno, strerror)`` for an ``OSError`` (``EPIPE``: its reader is gone),
    ``(None, message)`` for a closed file's ``ValueError``; None if it did not.

    Bytes go to the stream's ``buffer``, after what was written to it as text;
    to a stream with none (a ``StringIO``), they are written decoded as
    ``encoding`` says (the worker's stream's as the task wrote them; UTF-8
    where the parent has no such codec) by the incremental decoder in
    ``decoders`` (one per worker and stream: a character may span writes).
    Text the stream cannot encode is written escaped (``backslashreplace``,
    as Python writes ``sys.stderr``): the task that printed it has ended
    well, and the line is not lost.
    """
    target = getattr(sys, STREAMS[stream], None)
    if target is None:
        return None  # no console (pythonw): dropped, as print() would drop it
    try:
        if isinstance(text, bytes):
            binary = getattr(target, "buffer", None)
            if binary is not None:
                target.flush()
                binary.write(text)
                binary.flush()
                return None
            text = _decoder(decoders, stream, encoding).decode(text)
        try:
            target.write(text)
        except UnicodeEncodeError:  # not in the stream's encoding (PYTHONIOENCODING=ascii): escaped, not dropped
            written_as = getattr(target, "encoding", None) or "ascii"
            target.write(text.encode(written_as, "backslashreplace").decode(written_as))
        target.flush()
    except OSError as error:  # a broken or closed stream must not break the pool's loop: the task hears of it
        return error.errno, error.strerror or str(error)
    except ValueError as error:  # a closed file object
        return None, str(error)
    except Exception:  # the user's stream object's own failure: not the task's to hear of
        pass
    return None


def _decoder(
    decoders: dict[int, tuple[str, codecs.IncrementalDecoder]], stream: int, encoding: str
) -> codecs.IncrementalDecoder:
    """The incremental decoder of ``stream`` in ``decoders`` for ``encoding``: a new one where the task reconfigured it."""
    kept = decoders.get(stream)
    if kept is not None and kept[0] == encoding:
        return kept[1]
    try:
        decoder = codecs.getincrementaldecoder(encoding)("replace")
    except LookupError:  # a codec the worker registered, which this process lacks
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
    decoders[stream] = (encoding, decoder)
    return decoder


def flush_c_stdio() -> Callable[[], object]:
    """A function that flushes C's ``stdio`` buffers (``fflush(NULL)``), or does nothing where unavailable."""
    try:
        return libc_call("fflush", None)
    except (OSError, AttributeError, ImportError):  # pragma: no cover - every POSIX libc has fflush
        return lambda: None
