"""The /metrics HTTP endpoint every lorafleet server runs for its own Prometheus registry
(each component keeps its own registry, so several can share one process, as in tests)."""

from __future__ import annotations

import argparse

from prometheus_client import CollectorRegistry, start_http_server

# --metrics-port: a port, 0 for a free one, -1 (any negative) for none; one rule for every
# server's command line.
OFF = -1


def add_metrics_port_argument(parser: argparse.ArgumentParser, default: int, what: str) -> None:
    """Adds --metrics-port to a server's parser; `what` says what its /metrics shows."""
    shown = "off" if default < 0 else str(default)
    parser.add_argument("--metrics-port", type=int, default=default, metavar="N",
                        help=f"Prometheus /metrics port ({what}); 0 picks a free one, -1 "
                             f"turns it off (default: {shown})")


def metrics_port_of(args: argparse.Namespace) -> int | None:
    """The --metrics-port to listen on, or None when it is off."""
    return None if args.metrics_port < 0 else args.metrics_port


class MetricsEndpoint:
    """Serves one registry on /metrics; `start` once, `close` any number of times."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serves on host:port (0 picks a free port); returns the bound port."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        """Stops serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
