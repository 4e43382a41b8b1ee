"""A resilient API-gateway reverse proxy."""

__version__ = "0.1.0"
