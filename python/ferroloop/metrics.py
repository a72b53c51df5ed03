"""Export ferroloop's loop metrics.

``openmetrics()`` renders every live loop's counters and histograms as
OpenMetrics text (which Prometheus scrapes); ``serve(port)`` answers
``GET /metrics`` from a native thread that needs no GIL, so a scrape gets
an answer even while a loop (or the interpreter) is blocked.
"""

from __future__ import annotations

from . import _ferroloop

__all__ = ("MetricsServer", "openmetrics", "serve")

MetricsServer = _ferroloop.MetricsServer


def openmetrics() -> str:
    """Every live ferroloop loop's metrics, as OpenMetrics text (``# EOF`` last)."""
    return _ferroloop._openmetrics()


def serve(port: int = 9464, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``openmetrics()`` on ``http://host:port/metrics`` from a native
    thread. ``port=0`` picks a free port (see ``.port``); ``.close()`` stops it."""
    return _ferroloop.MetricsServer(port, host)
