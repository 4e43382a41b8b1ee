"""Request-path normalisation (RFC 3986 section 6.2.2), done before route matching.

The path a route is matched, limited and forwarded on is one and the same:
percent-encoded unreserved characters are decoded, remaining escapes get
upper-case hex, dot-segments are removed. Encoded slashes and backslashes are
refused by default, since upstreams disagree on whether they separate
segments; control characters, encoded or not, are always refused.
"""

from __future__ import annotations

import re

from gateway.errors import BadRequest

# Paths made only of these bytes, with no "/." and no "%", are already normal.
_PLAIN = re.compile(rb"^/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*$")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Bytes allowed literally in a normalised path segment (pchar minus "%").
_PCHAR = _UNRESERVED | frozenset(b"!$&'()*+,;=:@")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def normalize_path(raw: bytes, *, keep_escaped_slashes: bool = False) -> str:
    """The normalised form of a request path, as an ASCII string.

    Raises ``BadRequest`` for paths that cannot be forwarded safely.
    """
    if _PLAIN.match(raw) and b"/." not in raw:
        return raw.decode("ascii")
    if not raw.startswith(b"/"):
        if raw == b"*":
            raise BadRequest("The asterisk request target is not proxied.", reason="bad_path")
        raise BadRequest("The request path must start with '/'.", reason="bad_path")
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # "%"
            if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                raise BadRequest("The request path holds a malformed escape.", reason="bad_path")
            value = int(raw[i + 1 : i + 3], 16)
            if value < 0x20 or value == 0x7F:
                raise BadRequest("The request path holds a control character.", reason="bad_path")
            if value in (0x2F, 0x5C) and not keep_escaped_slashes:
                raise BadRequest(
                    "The request path holds an encoded slash or backslash.",
                    reason="escaped_slash",
                )
            if value in _UNRESERVED:
                out.append(value)
            else:
                out += b"%%%02X" % value
            i += 3
            continue
        if c < 0x20 or c == 0x7F:
            raise BadRequest("The request path holds a control character.", reason="bad_path")
        if c == 0x5C and not keep_escaped_slashes:
            raise BadRequest("The request path holds a backslash.", reason="escaped_slash")
        if c == 0x2F or c in _PCHAR:
            out.append(c)
        else:
            # Bytes a URI may not hold literally (space, quotes, non-ASCII) are escaped.
            out += b"%%%02X" % c
        i += 1
    return remove_dot_segments(out.decode("ascii"))


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path; never climbs above the root."""
    if "/." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    # A path ending in a dot-segment names a directory: keep its trailing slash.
    if segments[-1] in (".", "..") and (not out or out[-1] != ""):
        out.append("")
    return "/" + "/".join(out)
