"""Pieces of the scripts that call the library from a signal handler that interrupted the main thread as it held a lock.

A handler runs on the main thread between two of its bytecodes: inside the
script's ``with lock`` block, as the code it interrupted would hold the lock.
"""

# What a call gave in the handler: "ok", or "RuntimeError" where it refused, saying why.
REFUSED_OR_OK = '''
def outcome(call):
    try:
        call()
    except RuntimeError as error:
        assert "signal handler" in str(error) and "another thread" in str(error), error
        return "RuntimeError"
    return "ok"
'''

# Each of ``calls`` made by a SIGUSR1 handler that interrupted ``with lock``; their outcomes printed on a line.
CALLS_UNDER_THE_LOCK = '''
outcomes = []
signal.signal(signal.SIGUSR1, lambda *_: outcomes.extend(f"{name}={outcome(call)}" for name, call in calls.items()))
with lock:
    signal.raise_signal(signal.SIGUSR1)
print(*outcomes, flush=True)
'''
