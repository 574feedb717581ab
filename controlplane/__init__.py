"""lorafleet controlplane."""
