"""Deployment material and `lorafleet plan`."""
