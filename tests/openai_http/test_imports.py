"""The HTTP layer runs in the gateway, which never imports torch or the engine."""

from __future__ import annotations

from tests.test_import_rules import MODULES, TORCH_STACK, closure


def test_openai_http_imports_no_torch_and_no_worker_internals():
    modules = [m for m in MODULES if m.startswith("lorafleet.dataplane.openai_http")]
    assert len(modules) > 5
    for module in modules:
        names = closure(module)
        roots = {name.split(".")[0] for name in names}
        assert not roots & TORCH_STACK, module
        internals = {n for n in names if n.startswith("lorafleet.dataplane.")
                     and not n.startswith("lorafleet.dataplane.openai_http")}
        assert not internals, (module, internals)
