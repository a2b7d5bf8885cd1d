"""The states of a task, shared by the handle and the backends that move it along.

Plain ints, ordered so that ``state >= SUCCEEDED`` means "ended". ``RETRY_WAIT``:
an attempt failed and the next one is scheduled; the task is neither running nor
ended.
"""

PENDING, RUNNING, RETRY_WAIT, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT = range(7)
STATE_NAMES = ("pending", "running", "waiting to retry", "succeeded", "failed", "cancelled", "timed out")
