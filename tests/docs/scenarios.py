"""Running a document's commands as a reader would: in order, in one shell, in a scratch
directory, against what the document says is already there (its `given`).

What a document cannot know is substituted, and only that: the ports it names become free
ports (the same port always the same one), example paths of models and adapters become the
test's tiny checkpoint and copies of a PEFT adapter, example hosts become loopback.
Optional parts written `[--flag value]` are left out. A command whose comment says it is
refused (its comment starts with "refused") must fail; one whose comment says it streams
runs for 3 s. A command that ends in
`&` starts a server: the script waits until its ports answer before going on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

from tests.docs.documented import Command

# Every port the docs name; each becomes a free port of this run.
DOC_PORTS = ("2379", "8000", "8080", "9400", "9401", "9402", "50050", "50051", "50052", "50053",
             "50060")
MODEL_PATHS = r"(?:/models/llama-3(?:\.1)?-8b(?:-instruct)?|\./my-model)(?=[\s/]|$)"
ADAPTER_PATHS = r"(?:/models/adapters/|/adapters/|\./adapters/)([\w./-]+)"
SERVER = re.compile(r"\blorafleet (serve|worker|gateway|controlplane)\b")
PRELUDE = r"""
set -u
ready() {  # waits until 127.0.0.1:$1 accepts connections (a server just started)
  for _ in $(seq 600); do
    (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0
    sleep 0.2
  done
  echo "nothing listens on port $1 after 120 s" >&2; return 1
}
serving() {  # waits until the gRPC server on 127.0.0.1:$1 reports SERVING (model loaded)
  for _ in $(seq 600); do
    grpcurl -plaintext -max-time 2 127.0.0.1:$1 grpc.health.v1.Health/Check 2>/dev/null \
      | grep -q SERVING && return 0
    sleep 0.2
  done
  echo "nothing serves on port $1 after 120 s" >&2; return 1
}
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT
"""


@dataclasses.dataclass
class Given:
    """What the scenario provides before the document's first command: environment
    variables, and fixed replacements (an address the document names for a server the
    test runs)."""

    env: dict[str, str] = dataclasses.field(default_factory=dict)
    replace: dict[str, str] = dataclasses.field(default_factory=dict)
    configs: dict[str, dict] = dataclasses.field(default_factory=dict)  # model path -> config.json


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Scenario:
    """One document's commands, made runnable in `scratch` with `model` and `adapter`."""

    def __init__(self, scratch: pathlib.Path, model: pathlib.Path, adapter: pathlib.Path,
                 given: Given):
        self.scratch, self.model, self.adapter, self.given = scratch, model, adapter, given
        self.ports = {port: str(free_port()) for port in DOC_PORTS}

    def substitute(self, text: str) -> str:
        """The command as it runs here."""
        for old, new in self.given.replace.items():
            text = text.replace(old, new)
        for model, config in self.given.configs.items():
            text = text.replace(model, str(self._config_only(model, config)))
        text = re.sub(r"\s*\[--[^\]]*\]", "", text)  # optional parts: [--flag value]
        text = re.sub(r"\b(cp-\d|localhost)(?=:\d)", "127.0.0.1", text)
        text = re.sub(r"\b({})\b".format("|".join(DOC_PORTS)), lambda m: self.ports[m.group(1)], text)
        text = re.sub(MODEL_PATHS, str(self.model), text)
        text = re.sub(ADAPTER_PATHS, lambda m: self._adapter_copy(m.group(1)), text)
        text = re.sub(r"(?<![\w./])(/models)?/adapters(?=\s|$)", str(self.scratch / "adapters"),
                      text)
        text = text.replace("/var/lib/etcd", str(self.scratch / "etcd"))
        return self._own_ports(text)

    def _config_only(self, model: str, config: dict) -> pathlib.Path:
        """A checkpoint directory holding only `config` (enough for `lorafleet plan`)."""
        path = self.scratch / "models" / model.strip("/").replace("/", "_")
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(config))
        return path

    def _adapter_copy(self, name: str) -> str:
        path = self.scratch / "adapters" / name
        if not path.exists():
            shutil.copytree(self.adapter, path)
        return str(path)

    def _own_ports(self, text: str) -> str:
        """A server started without --port or --metrics-port would take the fixed
        default, which another test may hold: give it free ones."""
        if not SERVER.search(text):
            return text
        if "--port" not in text:
            text = SERVER.sub(lambda m: f"{m.group(0)} --port {free_port()}", text, count=1)
        if "--metrics-port" not in text:
            text = SERVER.sub(lambda m: f"{m.group(0)} --metrics-port -1", text, count=1)
        return text

    def script(self, commands: list[Command]) -> str:
        """The shell script that runs `commands` in order and stops at the first one
        that does not do what its document says."""
        lines = [PRELUDE]
        for command in commands:
            lines += self._lines(command)
        return "\n".join(lines) + "\n"

    def _lines(self, command: Command) -> list[str]:
        text, where = self.substitute(command.text), command.where
        say = f"echo '### {where}'"
        if command.output:
            expected = self.scratch / f"expected-{command.line}.txt"
            expected.write_text(command.output)
            return [say, f"{text} > printed-{command.line}.txt || {{ echo 'FAILED {where}' "
                         ">&2; exit 1; }",
                    f"diff -u {expected} printed-{command.line}.txt >&2 || {{ echo 'PRINTED "
                    f"OTHERWISE {where}' >&2; exit 1; }}"]
        if text.endswith("&"):
            waits = [f"serving {p}" for p in re.findall(r"--port (\d+)", text)]
            waits += [f"ready {p}" for p in re.findall(r"--http-port (\d+)", text)]
            return [say, text, *(f"{wait} || {{ echo 'FAILED {where}' >&2; exit 1; }}"
                                 for wait in waits)]
        if command.comment.startswith("refused"):
            return [say, f"if {text}; then echo 'NOT REFUSED {where}' >&2; exit 1; fi"]
        if "stream" in command.comment:
            return [say, f"timeout 3 {text}; [ $? -eq 124 ] || {{ echo 'FAILED {where}' >&2; "
                         "exit 1; }"]
        return [say, f"{text} || {{ echo 'FAILED {where}' >&2; exit 1; }}"]

    def run(self, commands: list[Command], timeout: float = 400) -> subprocess.CompletedProcess:
        """Runs the script with the venv's programs first on PATH."""
        bin_dir = pathlib.Path(sys.executable).parent
        env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
        # The client commands' default address, 127.0.0.1:50051, is a port like the others.
        env["LORAFLEET_CONTROLPLANE"] = f"127.0.0.1:{self.ports['50051']}"
        env.update(self.given.env, PATH=f"{bin_dir}:{os.environ['PATH']}")
        return subprocess.run(["bash", "-c", self.script(commands)], cwd=self.scratch, env=env,
                              capture_output=True, text=True, timeout=timeout)
