"""The gateway's exception tree and the three uniform error-body formats.

Every error the gateway answers itself is a ``GatewayError``; foreign exceptions
(httpx, OS, Redis) are translated into one of these at the boundary that sees
them, with ``raise ... from``::

    GatewayError
    ├── ClientError                    4xx
    │   ├── BadRequest                 400 bad_request
    │   ├── Unauthorized               401 unauthorized (rate-limit key header missing)
    │   ├── NotFound                   404 not_found
    │   ├── MethodNotAllowed           405 method_not_allowed
    │   ├── PayloadTooLarge            413 payload_too_large
    │   ├── RateLimited                429 rate_limit_exceeded
    │   └── HeadersTooLarge            431 headers_too_large
    └── ServerError                    5xx
        ├── InternalError              500 internal_error
        ├── BadGateway                 502 bad_gateway
        ├── ServiceUnavailable         503 service_unavailable
        │   └── RateLimiterUnavailable 503 rate_limiter_unavailable
        └── GatewayTimeout             504 gateway_timeout

``reason`` is a stable sub-code that tells the gateway's own failures apart
(``connect_failed``, ``upstream_timeout``, ``circuit_open`` ...) while ``code``
stays the one SPEC section 5 promises.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, ClassVar, Literal

ErrorFormat = Literal["problem", "envelope", "stripe"]
FailureKind = Literal["connect_error", "timeout", "protocol_error"]
"""An upstream try that produced no response: refused/unreachable, too slow, or garbled."""
FAILURE_KINDS: tuple[FailureKind, ...] = ("connect_error", "timeout", "protocol_error")
ERROR_FORMATS: tuple[ErrorFormat, ...] = ("problem", "envelope", "stripe")

Headers = list[tuple[bytes, bytes]]


class GatewayError(Exception):
    """An error the gateway answers with a uniform body."""

    status: int = 500  # an instance may override it (odd upstream statuses)
    code: str = "internal_error"
    # For failures of an upstream exchange: connect_error, timeout or protocol_error
    # (the retry policy's and the failure metric's vocabulary); None otherwise.
    kind: FailureKind | None = None
    default_detail: ClassVar[str] = "The gateway failed to handle the request."

    def __init__(
        self,
        detail: str | None = None,
        *,
        reason: str | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
        extra: dict[str, Any] | None = None,
        kind: FailureKind | None = None,
    ) -> None:
        self.detail = detail or self.default_detail
        self.reason = reason
        self.kind = kind
        self.headers = list(headers)
        self.extra = extra
        super().__init__(self.detail)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r}, reason={self.reason!r})"


class ClientError(GatewayError):
    status = 400
    code = "bad_request"


class BadRequest(ClientError):
    default_detail = "The request is malformed."


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"
    default_detail = "The request lacks the credential this route is limited by."


class NotFound(ClientError):
    status = 404
    code = "not_found"
    default_detail = "No route matches the request."


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"
    default_detail = "The route does not allow this method."


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"
    default_detail = "The request body is larger than the gateway accepts."


class RateLimited(ClientError):
    status = 429
    code = "rate_limit_exceeded"
    default_detail = "Too many requests: the rate limit of this route is exhausted."


class HeadersTooLarge(ClientError):
    status = 431
    code = "headers_too_large"
    default_detail = "The request head is larger than the gateway accepts."


class ServerError(GatewayError):
    status = 500
    code = "internal_error"


class InternalError(ServerError):
    pass


class BadGateway(ServerError):
    status = 502
    code = "bad_gateway"
    default_detail = "The upstream service failed to answer properly."


class ServiceUnavailable(ServerError):
    status = 503
    code = "service_unavailable"
    default_detail = "The upstream service is unavailable."


class RateLimiterUnavailable(ServiceUnavailable):
    code = "rate_limiter_unavailable"
    default_detail = "The rate limiter is unavailable; the request was not let through."


class GatewayTimeout(ServerError):
    status = 504
    code = "gateway_timeout"
    default_detail = "The upstream service did not answer in time."


# Upstream statuses the gateway rewrites map onto these errors (reason upstream_status).
_BY_STATUS: dict[int, type[GatewayError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    429: RateLimited,
    431: HeadersTooLarge,
    500: InternalError,
    502: BadGateway,
    503: ServiceUnavailable,
    504: GatewayTimeout,
}


def error_for_status(status: int) -> GatewayError:
    """The uniform error for an upstream response with ``status`` being rewritten."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ClientError
        err = cls(f"The upstream service answered {status}.", reason="upstream_status")
        err.status = status
        return err
    return cls(f"The upstream service answered {status}.", reason="upstream_status")


# RFC 9110 renamed a few phrases; Python's HTTPStatus has them only from 3.13.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def _title(status: int) -> str:
    if status in _TITLES:
        return _TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _stripe_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status < 500:
        return "invalid_request_error"
    return "api_error"


class ErrorRenderer:
    """Renders ``GatewayError``s in one configured format; built once per config."""

    __slots__ = ("content_type", "format", "type_base")

    def __init__(self, fmt: ErrorFormat, type_base: str) -> None:
        self.format = fmt
        self.type_base = type_base
        self.content_type = b"application/problem+json" if fmt == "problem" else b"application/json"

    def type_uri(self, code: str) -> str:
        return self.type_base + code.replace("_", "-")

    def body(self, err: GatewayError, instance: str, request_id: str) -> dict[str, Any]:
        """The error body as a JSON-ready dict (pure; tests compare it field by field)."""
        status = err.status
        fields: dict[str, Any] = {}
        if err.reason is not None:
            fields["reason"] = err.reason
        if err.extra:
            fields.update(err.extra)
        if self.format == "problem":
            return {
                "type": self.type_uri(err.code),
                "title": _title(status),
                "status": status,
                "detail": err.detail,
                "instance": instance,
                "code": err.code,
                "request_id": request_id,
                **fields,
            }
        if self.format == "envelope":
            return {
                "error": {
                    "code": err.code,
                    "message": err.detail,
                    "details": [],
                    "request_id": request_id,
                    **fields,
                }
            }
        return {
            "error": {
                "type": _stripe_type(status),
                "code": err.code,
                "message": err.detail,
                "param": None,
                "doc_url": self.type_uri(err.code),
                "request_id": request_id,
                **fields,
            }
        }

    def render(self, err: GatewayError, instance: str, request_id: str) -> bytes:
        return json.dumps(
            self.body(err, instance, request_id), separators=(",", ":"), ensure_ascii=False
        ).encode()
