"""lorafleet dataplane."""
