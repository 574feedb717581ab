"""The /metrics HTTP endpoint every lorafleet server runs for its own Prometheus registry
(each component keeps its own registry, so several can share one process, as in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


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
