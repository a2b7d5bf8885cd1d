"""The states of a task, shared by the handle and the backends that move it along.

Plain ints, ordered so that ``state >= SUCCEEDED`` means "ended".
"""

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT = range(6)
STATE_NAMES = ("pending", "running", "succeeded", "failed", "cancelled", "timed out")
