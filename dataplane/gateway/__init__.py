"""The gateway: routes InferenceService.Generate to workers by the control plane's routing
table (rollout weights, device tier first, least outstanding), loading versions on demand.

Imports grpc, prometheus_client and the stubs only — never torch — so it starts in a second.
"""
