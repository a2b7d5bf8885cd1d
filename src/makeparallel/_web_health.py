"""What the web integrations serve: health answers and the Prometheus page.

Shared by ``makeparallel.fastapi`` and ``makeparallel.flask`` so that both answer
alike; it uses the public API only.

* ``/health/live``: 200 while the library's report says it is live, else 503.
  A liveness probe restarts the process: only a library that cannot make
  progress should fail it.
* ``/health/ready``: 503 only when the library cannot take work (shut down, a
  pool that cannot run tasks: whatever makes ``health()`` say not ready). A
  degraded state (a saturated queue, one open breaker, memory paused) answers
  200 with ``"status": "degraded"`` in the body, so that one failing dependency
  does not take every replica out of the load balancer at once.
"""

from __future__ import annotations

from typing import Any

import makeparallel as mp

__all__ = ["PROMETHEUS_CONTENT_TYPE", "health_answer", "metrics_page", "metrics_registry"]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def health_answer(probe: str) -> tuple[int, dict[str, Any]]:
    """``(status code, JSON body)`` for the ``"live"`` or ``"ready"`` probe."""
    report = mp.health()
    ok = bool(report[probe])
    return (200 if ok else 503), report


def metrics_registry(registry: Any = None) -> Any:
    """``registry`` with the library's collector in it; a registry of its own if ``None``.

    Raises:
        ImportError: prometheus-client is not installed.
        TypeError: ``registry`` is no ``prometheus_client`` registry, with
            ``register()`` and ``collect()`` (a port, the registry class).
        ValueError: ``registry`` has another collector of the library's metric
            names: the library's metrics would not be served.
    """
    from makeparallel.prometheus import _check_registry, _register_once

    try:
        import prometheus_client
    except ImportError as error:  # pragma: no cover - register() raised the same first
        raise ImportError('serving /metrics needs prometheus-client: pip install "makeparallel[prometheus]"') from error
    if registry is None:
        registry = prometheus_client.CollectorRegistry()
    else:
        _check_registry(registry, "one of its own")
    _register_once(registry)  # registered already: its metrics are served once, as they should be
    return registry


def metrics_page(registry: Any) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    import prometheus_client

    return prometheus_client.generate_latest(registry)
