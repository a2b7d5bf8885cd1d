"""StatsD export: counters and timers over UDP, from a background thread.

    from makeparallel.statsd import StatsdExporter
    exporter = StatsdExporter("127.0.0.1", 8125, prefix="myapp.makeparallel").start()
    ...
    exporter.stop()

Every ``interval`` seconds the exporter reads :func:`makeparallel.metrics_snapshot`
and sends what changed since the last flush (and once more at :meth:`~StatsdExporter.stop`,
or at interpreter exit after the pools' tasks ended, for one never stopped):

* ``<prefix>.<function>.<status>:<n>|c`` for tasks that ended (completed, failed,
  cancelled, timed_out), ``<prefix>.<function>.submitted:<n>|c``, and for
  retries ``.retried`` (tasks retried) and ``.retries`` (attempts after the first);
* ``<prefix>.<function>.duration:<ms>|ms|@<rate>`` and ``...queue_wait...``: the
  timers, one line per histogram bucket that gained samples, its sample rate
  1/count, so the server counts every task, and its value the bucket's
  midpoint scaled so that the lines add up to the time measured since the
  last flush: the server's sum and mean are the true ones (:func:`_timer_lines`);
* ``<prefix>.pool.<pool>.queued:<n>|g`` and ``.busy`` gauges.

It never blocks or fails a task: tasks are not involved at all, sends are
non-blocking, and a send that fails (nothing listening) is dropped.
No extra package needed.

The host may be an IPv4 or IPv6 address or a name; a name is resolved again
every 30 seconds (see :class:`StatsdExporter`), and a flush that finds no address
sends nothing and loses nothing: its counts go with the next one that does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import socket
import threading
import time
import unicodedata
import weakref
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import makeparallel

# _task_metrics: loaded here, on the thread that imports the exporter, not by the first
# flush on its own thread: TaskMetrics is a dataclass, whose methods exec builds, and source
# run after a Ctrl-C ended the main module (stop() at exit flushes once more) clears
# CPython's record of it: the program exited with status 1, not killed by SIGINT (see _load).
# _circuit, _memory_guard, _metrics: loaded before this module registers its at-fork hook,
# for their own hooks to run first in a forked child: each gives the child new locks for
# what a flush reads (the breakers, the memory limit, the counts), which the parent's
# threads may have held as it forked. The child's exporter thread starts in this module's
# hook; where they were loaded later, it could read an old lock, held for good, before
# theirs ran, and the child never sent again.
from . import _at_fork_in_child, _circuit, _memory_guard, _metrics, _task_metrics  # noqa: F401
from ._backends._fd_numbers import standard_numbers_held
from ._interruptible import join
from ._runtime import after_pools_at_exit, forget_after_exit
from ._validation import as_integer, as_seconds, is_real, shown

__all__ = ["StatsdExporter"]

_log = logging.getLogger("makeparallel")
_MAX_PACKET = 1432  # fits one Ethernet frame without fragmenting
# Seconds a name's address is used before it is looked up again: a server that moved gets
# the flushes within that, at a thirtieth of the lookups of one per flush (every second).
_LOOKUP_EVERY = 30.0
#: Seconds exit waits, at most, for the last flush of an exporter never stopped.
EXIT_FLUSH_WAIT = 2.0
# What a prefix cannot hold: the StatsD line's separators (name:value|type|@rate) and spaces.
_BAD_IN_PREFIX = re.compile(r"[:|@\s]")
_now = time.monotonic  # (a name of its own: the tests move this module's clock alone)
# The exporters started and not stopped: a forked child starts each again (_go_on_in_child).
_started: weakref.WeakSet[StatsdExporter] = weakref.WeakSet()
_STATUSES = (
    ("completed", "completed_tasks"),
    ("failed", "failed_tasks"),
    ("cancelled", "cancelled_tasks"),
    ("timed_out", "timed_out_tasks"),
    ("submitted", "total_tasks"),
    ("retried", "retried_tasks"),
    ("retries", "retries"),
)


def _ipv6_address(host: str) -> bool:
    """Whether ``host`` is an IPv6 address (with a ``%zone``, as getaddrinfo takes it)."""
    try:
        socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except (OSError, ValueError):
        return False
    return True


def _safe(name: str) -> str:
    """``name`` as a metric name's label: letters, digits, ``_`` and ``-``, others replaced by ``_``.

    StatsD servers keep only those (etsy's deletes the rest, DogStatsD
    replaces them), all ASCII. A name with other characters (a function
    named in Chinese, or "größe") is decomposed (NFKD) so that accented
    letters keep their base letter, and ends with eight hex digits of its
    BLAKE2 digest: its letters dropped, "处理" and "函数" were both sent as
    "unnamed", one series for two functions. An ASCII name with a letter or
    digit in it is sent as it always was.
    """
    safe = re.sub(r"[^A-Za-z0-9_\-]+", "_", name).strip("_")
    if safe and name.isascii():
        return safe
    readable = re.sub(r"[^A-Za-z0-9_\-]+", "_", unicodedata.normalize("NFKD", name)).strip("_") or "unnamed"
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{readable}_{digest}"


class StatsdExporter:
    """Sends makeparallel's metrics to a StatsD server every ``interval`` seconds.

    Args:
        host: the StatsD server: an IPv4 or IPv6 address, or a name (default
            IPv4 loopback).
        port: its UDP port.
        prefix: put before every metric name, with a dot between (a
            trailing dot is not doubled); ``""`` for none.
        interval: seconds between flushes.

    Raises:
        TypeError: ``host`` is not a ``str``, ``port`` not an ``int`` or
            ``prefix`` not a ``str``.
        ValueError: ``host`` is empty or cannot be a host name (an empty
            label, one over 63 characters, a port or brackets or spaces in
            it), ``port`` outside 1 to 65535, ``prefix`` with a ``:``,
            ``|``, ``@``, a space or an empty label (``"a..b"``) in it or that
            UTF-8 cannot encode (a lone surrogate), or ``interval`` not a
            finite number above 0.

    Resolution:
        ``host`` is looked up (``socket.getaddrinfo``) at the first flush and
        again every 30 seconds, not once: a server that moved (a new pod, its
        name now another address) gets the flushes from the next lookup on,
        and a name not known yet when the program starts (a sidecar's) is not
        an error: a flush after a failed lookup looks it up again. A name with IPv4 and IPv6 addresses is sent
        to its first IPv4 one, as StatsD servers listen on IPv4 by default.
        A flush that finds no address (or cannot open a socket for it) sends
        nothing and logs a warning on the ``"makeparallel"`` logger, once
        for each kind of failure in a row, not at every flush; the counts and
        timings of that time are sent by the first flush that can send, and
        an info message says so.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8125, prefix: str = "makeparallel", interval: float = 1.0
    ) -> None:
        # Finite: the flushing thread waits that long, and a lock refuses an infinite wait (OverflowError).
        if not is_real(interval) or not 0 < as_seconds(interval) < math.inf:
            raise ValueError(f"interval must be a finite number of seconds > 0, got {shown(interval)}")
        # Checked here: in the exporter's thread, a bad one failed every flush, only logged.
        if not isinstance(host, str):
            raise TypeError(f"host must be a str (a name or an address), got {host!r}")
        if not host:
            raise ValueError("host must name the StatsD server (a name or an address), got ''")
        try:
            host.encode("idna")  # as getaddrinfo encodes it: what fails here fails every lookup
        except UnicodeError as error:
            raise ValueError(f"host must be a host name or an address, got {host!r} ({error})") from None
        if any(c.isspace() for c in host) or (":" in host and not _ipv6_address(host)):
            # "127.0.0.1:8125", "[::1]", " statsd": no lookup ever finds them; said at the first flush only
            raise ValueError(
                f"host must be a host name or an address alone, got {host!r}: give the port as port=, "
                "an IPv6 address without brackets (\"::1\"), and no spaces"
            )
        checked_port = as_integer(port)  # a plain int: a socket address takes no NumPy one
        if checked_port is None:
            raise TypeError(f"port must be an int from 1 to 65535, got {port!r}")
        if not 1 <= checked_port <= 65535:  # 0 names no port to send to: every packet is refused (EINVAL), silently
            raise ValueError(f"port must be an int from 1 to 65535, got {port!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        prefix = prefix.rstrip(".")
        # Checked, not sanitised as function names are: the prefix is the user's own
        # namespace. A ":" or "|" in it broke every line of every flush (the server read
        # the rest as the value), and an empty label made a path segment of no name.
        if _BAD_IN_PREFIX.search(prefix):
            raise ValueError(
                f"prefix must be metric name labels joined by dots, without ':', '|', '@' or spaces, got {prefix!r}: "
                "they are the StatsD line's separators (use '_' instead)"
            )
        try:
            prefix.encode("utf-8")  # as every line is sent
        except UnicodeEncodeError:
            # A lone surrogate (os.fsdecode() of bytes that are not UTF-8): every flush failed, logged each time.
            raise ValueError(
                f"prefix must be encodable in UTF-8 (no lone surrogates, which os.fsdecode() makes of bytes "
                f"that are not UTF-8), got {prefix!r}: decode it from bytes with errors='replace'"
            ) from None
        if prefix and "" in prefix.split("."):
            raise ValueError(f"prefix must be metric name labels joined by dots, got {prefix!r}, which has an empty label")
        self._host, self._port = host, checked_port
        self._prefix = f"{prefix}." if prefix else ""  # "": the names alone
        self._interval = float(interval)
        # A socket per address family, opened by the first flush to an address of it.
        # Under their own lock: stop() closes them while a flush may be opening one.
        self._sockets: dict[int, socket.socket] = {}
        self._sockets_lock = threading.Lock()
        self._closed = False
        # What the last flush that found no address logged; None while one is found.
        self._failure: str | None = None
        # The address the last lookup found (its family, then the address), and when.
        self._found: tuple[int, Any] | None = None
        self._found_at = 0.0
        self._previous: dict[str, dict[str, Any]] = {}
        # One flush at a time: each sends the change since the one before it. Two at
        # once (flush() called while the thread flushes) sent the same change twice.
        self._flushing = threading.Lock()
        self._resets = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StatsdExporter:
        """Start flushing in a daemon thread; returns the exporter.

        An exporter not stopped by then is stopped at interpreter exit, once
        the pools have waited for their tasks: its last flush sends what
        changed since the one before, the tasks that ended during that wait too.

        Raises:
            RuntimeError: it was started already, or stopped (its sockets are
                closed for good: make a new exporter).

        After a fork:
            A child of ``os.fork()`` (a worker of ``gunicorn --preload``)
            flushes too, from a thread and a socket of its own, sending its own
            tasks only (its counts start from zero). Its last flush at exit is
            skipped where it ends with ``os._exit()`` (``multiprocessing``'s
            children do): call :meth:`stop` there first.
        """
        if self._stopped.is_set():
            raise RuntimeError("this StatsD exporter was stopped and cannot start again: make a new StatsdExporter")
        if self._thread is not None:
            raise RuntimeError("this StatsD exporter is already started")
        self._thread = threading.Thread(target=self._run, name="makeparallel-statsd", daemon=True)
        self._thread.start()
        _started.add(self)
        # A daemon thread dies at exit without its last flush: a program that never called
        # stop() (a batch job shorter than the interval, a script run to its end) lost
        # every count since the flush before, all of them with a long interval.
        after_pools_at_exit(self._stop_at_exit)
        return self

    def stop(self) -> None:
        """Flush once more, stop the thread and close the sockets; a flush after this sends nothing."""
        self._stop(5 * self._interval + 5)

    def _stop_at_exit(self) -> None:
        """:meth:`stop`, waiting at most :data:`EXIT_FLUSH_WAIT` seconds for the last flush: exit never waits on a stuck one.

        A lookup of the host that hangs (a resolver that does not answer) held
        the program's exit for ``5 * interval + 5`` seconds, an hour and more
        with a long interval, where an exporter never stopped had let it exit at once.
        """
        self._stop(EXIT_FLUSH_WAIT)

    def _stop(self, wait: float) -> None:
        forget_after_exit(self._stop_at_exit)
        self._stopped.set()
        _started.discard(self)
        if self._thread is not None:
            # In slices: a Ctrl-C that landed on another thread left one join on the main thread waiting it out.
            join(self._thread, wait)
        with self._sockets_lock:
            self._closed = True
            sockets, self._sockets = list(self._sockets.values()), {}
        for sender in sockets:
            sender.close()

    def flush(self) -> None:
        """Send what changed since the last flush, now (after a flush under way ends).

        Where the host resolves to no address, nothing is sent and nothing is
        taken as sent (see "Resolution" above): this never raises for it.
        """
        with self._flushing:
            destination = self._destination()
            if destination is not None:
                self._send(self._lines(makeparallel.metrics_snapshot()), *destination)

    def _destination(self) -> tuple[socket.socket, Any] | None:
        """The socket and the address to send this flush to; None where there is none (stopped, or logged why).

        The address is looked up again once it is ``_LOOKUP_EVERY`` seconds
        old, and at the next flush after a lookup that failed, on the
        exporter's own thread: clients that send as tasks run resolve once (a
        lookup per packet would slow them), and a server that moved is then
        never found again; a lookup at every flush found it at once but asked
        the system's resolver every second, which in a container without a
        resolver cache is a DNS query a second per program, or several under
        a search path.
        """
        now = _now()
        if self._found is None or now - self._found_at >= _LOOKUP_EVERY:
            self._found = self._look_up()
            self._found_at = now
        if self._found is None:
            return None
        family, address = self._found
        try:
            sender = self._socket_for(family)
        except OSError as error:  # this family is disabled here (EAFNOSUPPORT), or no descriptor is left
            self._found = None  # looked up again at the next flush
            self._failed(f"cannot open a {socket.AddressFamily(family).name} socket for {self._host!r} ({error})")
            return None
        if sender is None:
            return None  # stopped
        if self._failure is not None:
            self._failure = None
            _log.info("the StatsD exporter sends to %r again (%s), with the counts kept meanwhile", self._host, address[0])
        return sender, address

    def _look_up(self) -> tuple[int, Any] | None:
        """The host's address family and address to send to; None where it has none now (logged)."""
        try:
            found = socket.getaddrinfo(self._host, self._port, 0, socket.SOCK_DGRAM)
        except OSError as error:  # socket.gaierror: not known, or no answer now
            self._failed(f"cannot resolve {self._host!r} ({error})")
            return None
        addresses = [entry for entry in found if entry[0] in (socket.AF_INET, socket.AF_INET6)]
        if not addresses:
            self._failed(f"cannot resolve {self._host!r} to an IPv4 or IPv6 address (it gave {found!r})")
            return None
        # IPv4 first: StatsD servers listen on IPv4 by default (the reference one binds 0.0.0.0), and
        # "localhost" resolves to ::1 first on many systems; getaddrinfo's order would send there.
        family, _, _, _, address = min(addresses, key=lambda entry: entry[0] != socket.AF_INET)
        return family, address

    def _failed(self, why: str) -> None:
        """Log ``why`` this flush has no address to send to, unless the flush before logged the same."""
        if why != self._failure:
            self._failure = why
            _log.warning("the StatsD exporter %s: nothing is sent meanwhile, and the counts wait for a flush that can", why)

    def _socket_for(self, family: int) -> socket.socket | None:
        """The socket for addresses of ``family``, opened now if need be; None once stopped."""
        with self._sockets_lock:
            if self._closed:
                return None
            sender = self._sockets.get(family)
            if sender is None:
                with standard_numbers_held():
                    sender = socket.socket(family, socket.SOCK_DGRAM)
                sender.setblocking(False)
                self._sockets[family] = sender
            return sender

    def _go_on_in_child(self) -> None:
        """In a forked child: a thread, a socket and locks of its own, and no count sent yet.

        A fork copies no thread: a worker of a forking server (``gunicorn
        --preload``, ``os.fork()``) sent nothing, ever. The child's counts start
        from zero (``_metrics``), so what it sends is its own tasks; what the
        parent sent before is not sent again. The parent's socket is not
        shared, as StatsD clients do not share one across processes: the
        child's copy is closed (the parent's stays open). The locks may have
        been held by the parent's thread, mid-flush, at the fork.
        """
        if self._stopped.is_set():
            return
        self._flushing = threading.Lock()
        self._sockets_lock = threading.Lock()
        for sender in self._sockets.values():
            sender.close()
        self._sockets = {}
        self._previous = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="makeparallel-statsd", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self._flush_logged()
        self._flush_logged()

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception:
            _log.exception("the StatsD exporter could not flush")

    def _lines(self, snapshot: dict[str, Any]) -> Iterator[str]:
        if snapshot["resets"] != self._resets:  # reset_metrics(): count from zero again
            self._previous.clear()
            self._resets = snapshot["resets"]
        for name, metrics in snapshot["functions"].items():
            previous = self._previous.get(name, {})
            base = f"{self._prefix}{_safe(name)}"
            for status, field in _STATUSES:
                delta = _delta(metrics[field], previous.get(field, 0))
                if delta > 0:  # never negative: a StatsD counter only adds
                    yield f"{base}.{status}:{delta}|c"
            for timer, field, total in (
                ("duration", "execution_time_buckets", "execution_time_sum_seconds"),
                ("queue_wait", "queue_wait_buckets", "queue_wait_sum_seconds"),
            ):
                seconds = metrics[total] - previous.get(total, 0.0)
                yield from _timer_lines(f"{base}.{timer}", metrics[field], previous.get(field), seconds)
            self._previous[name] = metrics
        for pool, info in snapshot["pools"].items():
            base = f"{self._prefix}pool.{_safe(pool)}"
            yield f"{base}.queued:{info.get('queued_tasks', 0)}|g"
            yield f"{base}.busy:{info.get('busy_threads', info.get('busy_workers', 0))}|g"

    def _send(self, lines: Iterator[str], sender: socket.socket, address: Any) -> None:
        packet = b""
        for line in lines:
            data = line.encode()  # sized in bytes: a prefix may have characters of several
            if packet and len(packet) + 1 + len(data) > _MAX_PACKET:
                _send_packet(sender, packet, address)
                packet = b""
            packet = packet + b"\n" + data if packet else data
        if packet:
            _send_packet(sender, packet, address)


def _go_on_after_fork() -> None:
    """In a forked child: each exporter the parent started, and had not stopped, goes on here (its own thread)."""
    for exporter in list(_started):
        try:
            exporter._go_on_in_child()
        except (RuntimeError, OSError):  # no thread can start here (out of them): the child goes on without it
            _log.exception("the StatsD exporter could not start again in forked process %d", os.getpid())


_at_fork_in_child(_go_on_after_fork)


def _send_packet(sender: socket.socket, packet: bytes, address: Any) -> None:
    try:
        sender.sendto(packet, address)
    except OSError:
        pass  # nothing listens, the buffer is full, or stop() closed the socket: metrics are best effort


def _delta(now: int, before: int) -> int:
    return now - before


def _sample_rate(count: int) -> str:
    """``1 / count`` as digits and a point, to 6 significant digits.

    StatsD servers read a rate as ``@([\\d.]+)`` (the reference server does):
    ``1e-05``, which ``{:g}`` writes for a bucket of 100,000 samples, read as 1,
    and the server counted one sample for them all.
    """
    return f"{1 / count:.{5 + len(str(count))}f}".rstrip("0")


def _timer_lines(name: str, buckets: list[list[Any]], previous: list[list[Any]] | None, seconds: float) -> Iterator[str]:
    """One sampled timer line per bucket that gained samples since ``previous``; ``seconds``: their measured total.

    Each line's value is its bucket's midpoint, ``2.5 L`` of ``(L, 4L]``,
    times one factor for all of them: the one that makes the values, each
    counted as many times as its samples, add up to ``seconds``. Unscaled,
    a midpoint was up to 2.5 times the durations it stood for (ten tasks of
    21 ms were sent as 40.96 ms each), and the server's sum, mean and rates
    of time were as far off. The factor keeps the buckets' proportions, so
    the server's percentiles stay those of the buckets, about the true ones.
    """
    before = [count for _, count in previous] if previous else [0] * len(buckets)
    gained = []  # (midpoint in ms, samples) of each bucket that gained some
    lower = 0.0
    below_now = below_before = 0
    for (le, cumulative), cumulative_before in zip(buckets, before):
        added = _delta(cumulative - below_now, cumulative_before - below_before)
        below_now, below_before = cumulative, cumulative_before
        upper = lower * 4 if le == "+Inf" else float(le)
        if added > 0:
            gained.append(((lower + upper) / 2 * 1000.0, added))
        lower = upper if not math.isinf(upper) else lower
    midpoints_ms = sum(midpoint * added for midpoint, added in gained)
    # A total of 0 scales to 0: samples all of 0 s (@profiled's queue waits) are sent as 0,
    # not as the first bucket's midpoint. (No scaling where the total shrank: a reset not seen.)
    factor = seconds * 1000.0 / midpoints_ms if seconds >= 0 and midpoints_ms > 0 else 1.0
    for midpoint, added in gained:
        rate = "" if added == 1 else f"|@{_sample_rate(added)}"
        yield f"{name}:{_decimal(midpoint * factor)}|ms{rate}"


def _decimal(value: float) -> str:
    """``value`` to 6 significant digits, as digits and a point: never ``4e-05`` or ``2e+06``.

    A StatsD value is a decimal. A midpoint was always between 0.0005 and
    167,772 ms, which ``{:.6g}`` writes so; scaled to the time measured, a
    value is 40 ns or 2,000 s too, which it wrote in exponent notation.
    """
    return format(Decimal(f"{value:.6g}"), "f")
