"""The states of a task, shared by the handle and the backends that move it along.

Plain ints, ordered so that ``state >= SUCCEEDED`` means "ended". ``RETRY_WAIT``:
an attempt failed and the next one is scheduled; the task is neither running nor
ended.
"""

PENDING, RUNNING, RETRY_WAIT, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT = range(7)
STATE_NAMES = ("pending", "running", "waiting to retry", "succeeded", "failed", "cancelled", "timed out")

# Who holds a task (``handle._on_worker``): nobody (queued, or a backend that does
# not say); a waiter that claimed it to run inline; a worker; a worker, though the
# handle ended (abandoned); nobody yet, as it is held back from the queue (admission); a
# worker, though the handle ended with a map or batch stopped as a whole (stopped: nothing
# waits for that code, which the process backend would have killed).
UNCLAIMED, INLINE, ON_WORKER, ABANDONED, HELD, STOPPED = range(6)
