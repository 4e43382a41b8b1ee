"""Throughput benchmark harness: the gateway against nginx and bare Python proxies.

Run it with ``python benchmarks/run.py --help``; see ``benchmarks/README.md``.
"""
