"""Tests of lorafleet.kernels."""
