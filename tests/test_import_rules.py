"""The import rules of ARCHITECTURE.md, checked by walking every module's imports.

Imports are followed transitively through lorafleet's own modules, so a gateway module that
imports a dataplane helper that imports torch breaks the gateway's rule too. Imports inside
functions count: a lazy import still pulls the dependency in when it runs.
"""

from __future__ import annotations

import ast
import functools
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMPONENT_DIRS = {
    "lorafleet.clients": ROOT / "clients",
    "lorafleet.controlplane": ROOT / "controlplane",
    "lorafleet.dataplane": ROOT / "dataplane",
    "lorafleet.kernels": ROOT / "kernels",
    "lorafleet.runtime": ROOT / "runtime",
}
STUBS_DIR = ROOT / "protos" / "lorafleet"
# The generated stubs' packages (lorafleet.inference, .worker, .control).
STUB_PACKAGES = tuple(sorted(p.name for p in STUBS_DIR.iterdir() if p.is_dir()))
TORCH_STACK = {"torch", "triton", "safetensors", "tokenizers", "transformers", "numpy"}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package, folder in {**COMPONENT_DIRS, "lorafleet": STUBS_DIR}.items():
        for path in folder.rglob("*.py"):
            if package == "lorafleet" and path.relative_to(folder).parts[0] in {
                p.split(".")[1] for p in COMPONENT_DIRS
            }:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + is_package]
    return ".".join(base + ([node.module] if node.module else []))


@functools.cache
def direct_imports(module: str) -> frozenset[str]:
    """Every module name `module` imports, anywhere in its body."""
    tree = ast.parse(MODULES[module].read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(names)


def closure(module: str) -> set[str]:
    """All names reachable from `module` through lorafleet's own modules."""
    seen, todo, names = set(), [module], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in direct_imports(current):
            names.add(name)
            if name in MODULES:
                todo.append(name)
    return names


def _violations(prefix: str, forbidden) -> list[str]:
    bad = []
    for module in sorted(m for m in MODULES if m == prefix or m.startswith(prefix + ".")):
        hits = sorted(n for n in closure(module) if forbidden(n))
        if hits:
            bad.append(f"{module}: {', '.join(hits)}")
    return bad


def _top(name: str) -> str:
    return name.split(".")[0]


def _is_component(name: str, component: str) -> bool:
    return name == f"lorafleet.{component}" or name.startswith(f"lorafleet.{component}.")


CLIENT_ALLOWED_THIRD_PARTY = {"grpc", "grpc_health", "grpc_reflection", "grpc_status", "google"}


def _client_forbidden(name: str) -> bool:
    if name.startswith("lorafleet"):
        return not any(_is_component(name, c) for c in ("clients", "runtime", *STUB_PACKAGES))
    top = _top(name)
    return top not in CLIENT_ALLOWED_THIRD_PARTY and not _is_stdlib(top)


def _is_stdlib(top: str) -> bool:
    import sys

    return top in sys.stdlib_module_names or top == "__future__"


RULES = {
    "kernels imports torch and triton only": (
        "lorafleet.kernels",
        lambda n: not (_is_stdlib(_top(n)) or _top(n) in {"torch", "triton", "numpy"}
                       or _is_component(n, "kernels")),
    ),
    "dataplane never imports the control plane or clients": (
        "lorafleet.dataplane",
        lambda n: _is_component(n, "controlplane") or _is_component(n, "clients"),
    ),
    "the engine core imports no torch": (
        "lorafleet.dataplane.engine",
        lambda n: _top(n) in TORCH_STACK or _is_component(n, "kernels"),
    ),
    "the gateway imports no torch": (
        "lorafleet.dataplane.gateway",
        lambda n: _top(n) in TORCH_STACK or _is_component(n, "kernels"),
    ),
    "controlplane never imports torch, kernels or dataplane": (
        "lorafleet.controlplane",
        lambda n: _top(n) in TORCH_STACK or _is_component(n, "kernels")
        or _is_component(n, "dataplane") or _is_component(n, "clients"),
    ),
    "clients import the stubs, grpc and the runtime only": ("lorafleet.clients",
                                                             _client_forbidden),
    "the stubs import no component": (
        "lorafleet.inference",
        lambda n: any(_is_component(n, c) for c in ("controlplane", "dataplane", "kernels")),
    ),
    "the runtime imports no component and no torch": (
        "lorafleet.runtime",
        lambda n: _top(n) in TORCH_STACK
        or any(_is_component(n, c) for c in ("clients", "controlplane", "dataplane", "kernels")),
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_import_rule(rule):
    prefix, forbidden = RULES[rule]
    assert _violations(prefix, forbidden) == []


def test_the_walker_sees_a_violation(tmp_path, monkeypatch):
    """A planted torch import in a controlplane module is reported, so the rule can fail."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    import torch\n")
    monkeypatch.setitem(MODULES, "lorafleet.controlplane.planted", planted)
    direct_imports.cache_clear()
    prefix, forbidden = RULES["controlplane never imports torch, kernels or dataplane"]
    assert _violations(prefix, forbidden) == ["lorafleet.controlplane.planted: torch"]


def test_the_runtime_rule_sees_a_component_import(tmp_path, monkeypatch):
    """A planted runtime module that imports the dataplane inside a function is reported."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from lorafleet import dataplane\n")
    monkeypatch.setitem(MODULES, "lorafleet.runtime.planted", planted)
    direct_imports.cache_clear()
    try:
        prefix, forbidden = RULES["the runtime imports no component and no torch"]
        assert _violations(prefix, forbidden) == ["lorafleet.runtime.planted: lorafleet.dataplane"]
    finally:
        direct_imports.cache_clear()


def test_every_component_has_modules():
    for package in COMPONENT_DIRS:
        assert any(module.startswith(f"{package}.") for module in MODULES)


def test_only_the_store_speaks_etcd():
    """The control plane talks to etcd through store.py's typed transactions alone."""
    speaking = sorted(m for m in MODULES if _is_component(m, "controlplane")
                      and any(_top(n) == "aetcd" for n in direct_imports(m)))
    assert speaking == ["lorafleet.controlplane.store"]


PROCESS_FOLDERS = ("dataplane.engine_process", "dataplane.server")
# What runs in the engine process: its own folder, what it builds and steps, and the
# worker's configuration (dataplane/config/) both processes read.
ENGINE_SIDE = ("engine_process", "engine", "runner", "model", "lora", "adapters", "config")


@pytest.mark.parametrize("folder", ENGINE_SIDE)
def test_the_engine_process_imports_no_server_code(folder):
    """Code the engine process runs imports none of the server's (dataplane/server/,
    its HTTP API, the gateway)."""
    def is_server(name: str) -> bool:
        return any(_is_component(name, f"dataplane.{server}")
                   for server in ("server", "openai_http", "gateway"))

    assert _violations(f"lorafleet.dataplane.{folder}", is_server) == []


def _cycles(modules) -> list[list[str]]:
    """Import cycles (strongly connected components of more than one module) among
    lorafleet's own modules, imports inside functions included."""
    graph = {m: {n for n in direct_imports(m) if n in modules and n != m} for m in modules}
    order, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for other in graph[module]:
            if other not in order:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], order[other])
        if low[module] == order[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for module in modules:
        if module not in order:
            visit(module)
    return found


def _process_cycles() -> list[list[str]]:
    return [cycle for cycle in _cycles(MODULES)
            if any(_is_component(m, f) for m in cycle for f in PROCESS_FOLDERS)]


def test_no_import_cycle_through_the_process_folders():
    """The engine process's code and the server's import no cycle, not even through an
    import inside a function: the server's side may use the engine process's, never the
    other way round."""
    assert _process_cycles() == []


def test_the_cycle_finder_sees_a_function_level_cycle(tmp_path, monkeypatch):
    """A planted server module that imports the engine's entry point inside a function,
    imported back by it, is a cycle."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from lorafleet.dataplane.engine_process import main\n")
    main = tmp_path / "main.py"
    main.write_text(MODULES["lorafleet.dataplane.engine_process.main"].read_text()
                    + "\nfrom lorafleet.dataplane.server import planted\n")
    monkeypatch.setitem(MODULES, "lorafleet.dataplane.server.planted", planted)
    monkeypatch.setitem(MODULES, "lorafleet.dataplane.engine_process.main", main)
    direct_imports.cache_clear()
    try:
        assert ["lorafleet.dataplane.engine_process.main",
                "lorafleet.dataplane.server.planted"] in _process_cycles()
    finally:
        direct_imports.cache_clear()
