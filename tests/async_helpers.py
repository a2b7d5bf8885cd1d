"""Module-level objects for the asyncio tests that worker processes must import by name."""

from __future__ import annotations

import contextvars

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")


def raise_it(error: BaseException) -> None:
    """Raise ``error``: on a worker process, it crosses there and back pickled."""
    raise error
