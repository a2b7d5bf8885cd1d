"""Cancellation: queued tasks never run, running tasks are asked to stop and their
handle ends at once, and the pool's counts stay right."""

from __future__ import annotations

import threading

import pytest

import makeparallel as mp
from pool_helpers import hold_one_worker, wait_until


@pytest.mark.timeout(20)
def test_a_cancelled_queued_task_never_runs(gate: threading.Event) -> None:
    held = hold_one_worker(gate)
    ran: list[str] = []

    @mp.parallel
    def record(label: str) -> str:
        ran.append(label)
        return label

    doomed = record("doomed")
    after = record("after")  # same priority: a worker reaches it after "doomed"
    assert doomed.status == "pending"
    assert doomed.cancel() is True
    assert doomed.is_cancelled() and doomed.cancelled() and doomed.is_ready()
    assert doomed.status == "cancelled"
    message = f"task {doomed.get_task_id()} .* was cancelled"
    with pytest.raises(mp.TaskCancelledError, match=message):
        doomed.get()  # not run inline either
    gate.set()
    assert held.get(timeout=5) == "held"
    assert after.get(timeout=5) == "after"
    assert ran == ["after"]
    assert doomed.cancel() is False


@pytest.mark.timeout(20)
def test_cancelled_error_is_a_futures_cancelled_error(gate: threading.Event) -> None:
    import concurrent.futures

    held = hold_one_worker(gate)
    handle = mp.parallel(lambda: 1)()
    handle.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        handle.result()
    with pytest.raises(mp.TaskCancelledError):
        handle.exception()  # as in concurrent.futures: raised, not returned
    gate.set()
    assert held.wait(5)


@pytest.mark.timeout(20)
def test_cancelling_a_running_task_ends_its_handle_at_once(gate: threading.Event) -> None:
    mp.configure_thread_pool(num_threads=2)
    started, checked, returned = threading.Event(), threading.Event(), threading.Event()
    seen: list[BaseException | None] = []

    @mp.parallel
    def long() -> str:
        started.set()
        try:
            assert gate.wait(30)  # no cancellation point while held
            try:
                mp.check_cancelled()
                seen.append(None)
            except mp.TaskCancelledError as error:
                seen.append(error)
            checked.set()
            return "late"
        finally:
            returned.set()

    handle = long()
    assert started.wait(5)
    assert handle.running()
    assert handle.cancel() is True
    # The handle ended as cancelled while the task still runs.
    assert handle.is_ready() and handle.is_cancelled()
    assert not returned.is_set()
    with pytest.raises(mp.TaskCancelledError):
        handle.get(timeout=0)
    assert handle.cancel() is False
    assert mp.get_active_task_count() == 0

    gate.set()
    assert checked.wait(5)
    assert len(seen) == 1 and isinstance(seen[0], mp.TaskCancelledError)
    assert returned.wait(5)
    # The task returned "late"; the result is dropped.
    with pytest.raises(mp.TaskCancelledError):
        handle.get()
    assert handle.status == "cancelled"
    with pytest.raises(mp.TaskCancelledError):
        handle.try_get()


@pytest.mark.timeout(20)
def test_a_cooperative_task_stops_at_its_next_check(gate: threading.Event) -> None:
    started, stopped = threading.Event(), threading.Event()
    iterations: list[int] = []

    @mp.parallel
    def loop() -> str:
        started.set()
        try:
            for i in range(3000):
                if gate.wait(0.01):
                    return "released"
                iterations.append(i)
                mp.check_cancelled()
            return "never stopped"
        finally:
            stopped.set()

    handle = loop()
    assert started.wait(5)
    assert handle.cancel()
    assert stopped.wait(5), "check_cancelled() did not stop the cancelled task"
    with pytest.raises(mp.TaskCancelledError):
        handle.get()


@pytest.mark.timeout(20)
def test_a_cancelled_running_task_does_not_block_the_pool(gate: threading.Event) -> None:
    held = hold_one_worker(gate)

    @mp.parallel
    def later() -> int:
        return threading.get_ident()

    queued = later()
    assert held.cancel()
    # The cancelled task keeps its thread; a replacement runs the queued task.
    assert queued.get(timeout=5) != threading.get_ident()
    assert mp.get_thread_pool_info()["stuck_threads"] == 1
    gate.set()
    assert wait_until(lambda: mp.get_thread_pool_info()["stuck_threads"] == 0)
    assert wait_until(lambda: mp.get_thread_pool_info()["live_threads"] == 1)


@pytest.mark.timeout(20)
def test_cancelling_many_queued_tasks_keeps_the_counts_right(gate: threading.Event) -> None:
    held = hold_one_worker(gate)
    ran: list[int] = []
    lock = threading.Lock()

    @mp.parallel
    def record(i: int) -> int:
        with lock:
            ran.append(i)
        return i

    handles = [record(i) for i in range(20)]
    assert mp.get_thread_pool_info()["queued_tasks"] == 20
    assert mp.get_active_task_count() == 21

    assert all(h.cancel() for h in handles[::2])
    assert mp.get_thread_pool_info()["queued_tasks"] == 10
    assert mp.get_active_task_count() == 11
    # Cancelling again changes nothing.
    assert not any(h.cancel() for h in handles[::2])
    assert mp.get_thread_pool_info()["queued_tasks"] == 10
    assert mp.get_active_task_count() == 11

    assert all(h.cancel() for h in handles[1::4])
    assert mp.get_thread_pool_info()["queued_tasks"] == 5
    assert mp.get_active_task_count() == 6

    gate.set()
    assert held.wait(5)
    for handle in handles:
        assert handle.wait(5)
    kept = list(range(3, 20, 4))
    assert sorted(ran) == kept
    assert [h.get() for h in handles[3::4]] == kept
    info = mp.get_thread_pool_info()
    assert info["queued_tasks"] == 0 and info["busy_threads"] == 0
    assert mp.get_active_task_count() == 0
    # The skipped entries left nothing behind: the pool still runs new work.
    assert record(99).get(timeout=5) == 99


@pytest.mark.timeout(20)
def test_cancel_after_the_end_returns_false() -> None:
    @mp.parallel
    def quick() -> int:
        return 1

    handle = quick()
    assert handle.get(timeout=5) == 1
    assert handle.cancel() is False
    assert not handle.is_cancelled()
    assert handle.get() == 1


@pytest.mark.timeout(20)
def test_cancel_from_another_thread_wakes_a_blocked_waiter(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel
    def held() -> None:
        started.set()
        assert gate.wait(30)

    handle = held()
    assert started.wait(5)
    outcome: list[BaseException] = []
    woke = threading.Event()

    def waiter() -> None:
        try:
            handle.get()
        except BaseException as error:
            outcome.append(error)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not woke.wait(0.1)
    assert handle.cancel()
    assert woke.wait(5), "cancel() did not wake a thread blocked in get()"
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], mp.TaskCancelledError)
    gate.set()


@pytest.mark.timeout(60)
def test_a_tasks_cancel_with_timeout_for_its_child_ends_at_its_own_cancel(gate: threading.Event) -> None:
    """Its other waits for its children raise at its cancel; this one waited its whole timeout."""
    child_runs = threading.Event()
    waited: list[BaseException] = []

    @mp.parallel
    def child() -> None:
        child_runs.set()
        gate.wait(60)  # never checks for its cancel

    @mp.parallel
    def parent() -> None:
        handle = child()
        assert child_runs.wait(10)
        try:
            handle.cancel_with_timeout(60)
        except BaseException as error:
            waited.append(error)
            raise

    mp.configure_thread_pool(num_threads=2)
    outer = parent()
    assert child_runs.wait(10)
    assert outer.cancel_with_timeout(10)  # the parent's code returned: its wait ended
    assert [type(error) for error in waited] == [mp.TaskCancelledError]
    gate.set()
