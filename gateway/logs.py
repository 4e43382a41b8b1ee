"""Logging: the process's log setup, and the access log.

The access log is one JSON line per request, through the standard logging module.
Lines go to the ``gateway.access`` logger, whose handler writes to stdout
without a flush per line (a syscall per request would cost more than the rest
of the log line); ``flush`` runs on a timer and at shutdown instead.

``Logger.info`` spends ~40 us per call here looking up its caller and filling
a ``LogRecord`` field by field; ``write`` hands the logger's handlers a record
copied from a template instead (``Logger.handle`` is the public entry for
records made elsewhere), and the line is assembled from values whose character
sets are known, escaping only the free-form ones.
"""

from __future__ import annotations

import logging
import sys
import time
from json.encoder import encode_basestring_ascii
from typing import Any, TextIO

logger = logging.getLogger("gateway.access")


class _AbortFilter(logging.Filter):
    """Turns uvicorn's traceback for a deliberately cut response into one warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        from gateway.proxy import UpstreamAborted

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UpstreamAborted):
            record.msg = "response cut short: %s"
            record.args = (exc,)
            record.exc_info = None
            record.levelno = logging.WARNING
            record.levelname = "WARNING"
        return True


def configure_logging(level: str) -> None:
    """Process logs to stderr at ``level``; the access log is set up by ``configure``."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request at INFO: the health checks would fill the log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _AbortFilter) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_AbortFilter())


_TEMPLATE: dict[str, Any] = vars(
    logging.LogRecord("gateway.access", logging.INFO, __file__, 0, "", None, None, "write")
)
# relativeCreated counts from logging's import; carry the template's offset forward.
_T0: float = _TEMPLATE["created"]
_R0: float = _TEMPLATE["relativeCreated"]


def write(message: str) -> None:
    """Logs one line at INFO on the access logger, cheaply."""
    if logger.disabled or not logger.isEnabledFor(logging.INFO):
        return
    record = logging.LogRecord.__new__(logging.LogRecord)
    fields = record.__dict__
    fields.update(_TEMPLATE)
    now = time.time()
    fields["msg"] = message
    fields["created"] = now
    fields["msecs"] = (now - int(now)) * 1000
    fields["relativeCreated"] = _R0 + (now - _T0) * 1000
    logger.handle(record)


def _json(value: str | None) -> str:
    return "null" if value is None else str(encode_basestring_ascii(value))


class BufferedStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that leaves flushing to ``flush()`` callers (a timer, shutdown)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_handler: BufferedStreamHandler | None = None


def configure(enabled: bool, stream: TextIO | None = None) -> None:
    """Turns the access log on (to ``stream``, default stdout) or off."""
    global _handler
    if _handler is not None:
        logger.removeHandler(_handler)
        _handler.flush()
        _handler = None
    logger.propagate = False
    logger.disabled = not enabled
    if enabled:
        _handler = BufferedStreamHandler(stream or sys.stdout)
        _handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(_handler)
        logger.setLevel(logging.INFO)


def flush() -> None:
    if _handler is not None:
        _handler.flush()


def enabled() -> bool:
    return not logger.disabled


def line(
    *,
    request_id: str,
    route: str | None,
    method: str,
    path: str,
    status: int,
    upstream: str | None,
    target: str | None,
    duration: float,
    client_ip: str,
    rate_limit: str | None,
    error: str | None,
) -> str:
    """One access-log line, a JSON object (pure, for tests).

    Request ids, route and upstream names, methods, addresses, decisions and error
    codes come from validated character sets; path and target are escaped.
    """
    return (
        f'{{"time":"{_timestamp()}","request_id":"{request_id}","route":{_json(route)},'
        f'"method":"{method}","path":{_json(path)},"status":{status},'
        f'"upstream":{_json(upstream)},"target":{_json(target)},'
        f'"duration_ms":{duration * 1000:.3f},"client_ip":{_json(client_ip)},'
        f'"rate_limit":{_json(rate_limit)},"error":{_json(error)}}}'
    )


_ts_cache: list[object] = [0, ""]


def _timestamp() -> str:
    """RFC 3339 UTC with milliseconds; the seconds part is formatted once a second."""
    now = time.time()
    sec = int(now)
    if _ts_cache[0] != sec:
        _ts_cache[0] = sec
        _ts_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_ts_cache[1]}.{int((now - sec) * 1000):03d}Z"
