"""A stand-in for the gateway's admin port: serves ``gateway.metrics`` with scripted counts.

Run as ``python -m tests.support.exporter_stub SCRIPT`` from the repository root, where
SCRIPT is JSON::

    {"tick": 0.05,
     "requests": [["users", "GET", 200, 3], ["users", "GET", 502, 1]]}

Every ``tick`` seconds each ``[route, method, status, n]`` adds ``n`` to its
``gateway_requests_total`` series (``n`` may be 0: the series exists and stays flat).
Ticks and scrapes take one lock, so every scrape sees whole ticks and the series keep the
script's exact proportions, which makes ratios computed by Prometheus exact.

It listens on 127.0.0.1 on a free port, prints that port on the first line of stdout, and
exits when its stdin closes, so it never outlives the test that started it.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter

from gateway.metrics import Metrics, render


def touch_every_metric(metrics: Metrics, name: str = "sample") -> None:
    """Give every metric family of SPEC section 6 at least one series (route, upstream and
    policy named ``name``), so an exposition shows all of them with their labels."""
    route = metrics.for_route(name, ["GET"], [name])
    route.methods["GET"].requests[200].inc()
    route.methods["GET"].duration.observe(0.02)
    route.errors[("bad_gateway", "upstream")].inc()
    route.rate_limits[name].allowed.inc()
    upstream = metrics.for_upstream(name, ["http://127.0.0.1:8001"])
    upstream.responses[502].inc()
    upstream.retries.inc()
    backend = metrics.for_backend("redis")
    backend.seconds.observe(0.0004)
    backend.up.set(1)


def main(script_text: str) -> None:
    script = json.loads(script_text)
    tick = float(script["tick"])
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    steps: list[tuple[Counter, int]] = []
    routes: dict[str, list[tuple[str, int, int]]] = {}
    for route, method, status, per_tick in script["requests"]:
        routes.setdefault(route, []).append((method, int(status), int(per_tick)))
    for route, entries in routes.items():
        bound = metrics.for_route(route, {method for method, _, _ in entries})
        steps += [(bound.methods[method].requests[status], n) for method, status, n in entries]
    lock = threading.Lock()
    stopped = threading.Event()

    def run_ticks() -> None:
        while not stopped.wait(tick):
            with lock:
                for counter, n in steps:
                    counter.inc(n)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                body, content_type = render(registry)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test's output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=run_ticks, daemon=True).start()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    stopped.set()
    server.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
