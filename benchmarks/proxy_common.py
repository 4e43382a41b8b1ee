"""What the two reference proxies share: hop-by-hop header filtering (RFC 9110
section 7.6.1) and their command line."""

import argparse
from collections.abc import Iterable, Sequence

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def end_to_end(
    items: Iterable[tuple[str, str]], *, drop: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Return the headers a proxy forwards: hop-by-hop ones, those named in
    ``Connection`` and those in ``drop`` (lower-case names) are removed."""
    pairs = list(items)
    removed = set(HOP_BY_HOP).union(drop)
    for name, value in pairs:
        if name.lower() == "connection":
            removed.update(token.strip().lower() for token in value.split(",") if token.strip())
    return [(name, value) for name, value in pairs if name.lower() not in removed]


def parse_proxy_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--host`` (default 127.0.0.1), ``--port`` and ``--upstream`` (``http://host:port``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8000")
    return parser.parse_args(argv)
