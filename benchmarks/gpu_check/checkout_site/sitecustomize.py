"""Run by Python at start-up in a child whose PYTHONPATH leads with this folder
(preflight.checkout_env): where lorafleet is not installed, as on the GPU machine, it is
imported from the checkout, as in the parent. Python runs only the first sitecustomize on
its path, so this one stands in for any other; a child of the check needs none."""

from benchmarks.gpu_check import preflight

preflight.ensure_lorafleet_importable()
