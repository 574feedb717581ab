"""What the gateway's OpenAI-compatible GET /v1/models lists: from the routing table, the
base model(s) its live workers serve and every routed adapter (parent: its base model)."""

from __future__ import annotations

from collections.abc import Callable

from lorafleet.dataplane.gateway.router import RouteError, Router
from lorafleet.dataplane.gateway.table import RoutingTable


class RoutingModels:
    """A `ModelLister` (see dataplane/openai_http) over the gateway's routing table."""

    def __init__(self, table: Callable[[], RoutingTable | None], router: Router):
        self._table = table
        self._router = router

    async def list_models(self, metadata=()) -> list:
        """Base models first, then adapters, each group sorted by id."""
        from lorafleet.dataplane.openai_http import ModelCard

        table = self._table()
        if table is None:
            return []
        cards = [ModelCard(id=name, parent=None) for name in table.base_models()]
        cards += [ModelCard(id=name, parent=route.base_model)
                  for name, route in sorted(table.routes.items())]
        return cards

    def base_model(self) -> str:
        """The name that means "no adapter" in the `model` field: the gateway's base model,
        or "" while it is not known (no table yet, or several base models and no
        --base-model)."""
        try:
            return self._router.base_model_of(self._table() or RoutingTable())
        except RouteError:
            return ""
