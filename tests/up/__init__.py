"""Tests of `lorafleet up`."""
