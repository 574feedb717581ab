"""lorafleet clients."""
