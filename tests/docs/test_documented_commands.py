"""Every command in README.md and docs/ works as written (issue 22 #3: no documented
serve, controlplane or gateway example started as written; curl examples had no key).

Commands are extracted from the documents themselves (tests/docs/documented.py): the
ones a machine like this one can run are run, in each document's order, against what
the document says is already there (tests/docs/scenarios.py); the rest are checked
without running (make -n, --help, kustomize, the compose file), or say why not.
"""

from __future__ import annotations

import itertools
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.docs.documented import ROOT, all_commands, rule_of
from tests.docs.scenarios import Given, Scenario, free_port
from tests.support.etcd import EtcdServer
from tests.up.processes import kill_marked, marked_env

COMMANDS = all_commands()


def _of(action: str) -> list:
    return [c for c in COMMANDS if (rule := rule_of(c)) is not None and rule.action == action]


def test_every_command_has_a_rule():
    unruled = [f"{c.where}: {c.text}" for c in COMMANDS if rule_of(c) is None]
    assert unruled == []
    # The docs do hold commands of each kind: the extraction has not gone blind.
    assert len(_of("run")) > 40 and len(_of("check")) > 10


@pytest.mark.parametrize("command", _of("check"), ids=lambda c: c.where)
def test_commands_that_cannot_run_here_are_checked(command):
    text = command.text
    if text.startswith("make "):
        done = subprocess.run(["make", "-n", *shlex.split(text)[1:]], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    elif re.match(r"python3? -m benchmarks", text):
        argv = [sys.executable, *shlex.split(text)[1:]]
        names = list(itertools.takewhile(lambda a: not a.startswith("-"), argv[3:]))
        if argv[3:4] == ["--quick"]:
            names = list(itertools.takewhile(lambda a: not a.startswith("-"), argv[4:]))
        if len(names) > 1:  # several benchmarks at once: each is a name python -m benchmarks knows
            argv = argv[:3] + names[:1]
        for name in names[1:]:
            extra = subprocess.run([*argv[:3], name, "--help"], cwd=ROOT, capture_output=True,
                                   text=True, timeout=120)
            assert extra.returncode == 0, extra.stderr[-2000:]
        done = subprocess.run(argv if "--help" in argv else [*argv, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    elif text.startswith("kubectl"):
        overlay = re.search(r"deploy/\S+", text).group(0)
        kubectl = pathlib.Path(sys.executable).parent / "kubectl"
        done = subprocess.run([str(kubectl), "kustomize", overlay], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    else:  # docker compose -f FILE ...: the file parses and names its services
        compose = yaml.safe_load((ROOT / re.search(r"-f (\S+)", text).group(1)).read_text())
        assert compose["services"]
        return
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def tiny(lora_suite):
    """(tiny checkpoint, a PEFT adapter of it)."""
    base, adapters = lora_suite
    return base, adapters["acme/qv8"]


def _run(scenario: Scenario, name: str) -> None:
    commands = [c for c in COMMANDS if c.file.name == name and rule_of(c).action == "run"]
    assert commands, name
    done = scenario.run(commands)
    assert done.returncode == 0, (f"stdout:\n{done.stdout[-4000:]}\nstderr:\n"
                                  f"{done.stderr[-4000:]}")


# The config.json of Llama 3.1 8B Instruct, which docs/deploy.md plans a worker for.
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16", "rope_theta": 500000.0, "tie_word_embeddings": False,
    "rms_norm_eps": 1e-05, "rope_scaling": {
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["worker.md", "deploy.md"])
def test_a_document_that_needs_nothing_runs_as_written(name, tiny, tmp_path):
    given = Given(configs={"/models/llama-3.1-8b-instruct": LLAMA_31_8B})
    _run(Scenario(tmp_path, *tiny, given), name)


@pytest.mark.slow
def test_controlplane_md_runs_as_written_on_an_etcd(tiny, tmp_path):
    etcd = EtcdServer(tmp_path / "etcd-data")
    etcd.data_dir.mkdir()
    etcd.start()
    try:
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        _run(Scenario(scratch, *tiny, Given(replace={"http://127.0.0.1:2379": etcd.url})),
             "controlplane.md")
    finally:
        etcd.stop()


@pytest.fixture(scope="module")
def fleet(tiny, tmp_path_factory):
    """A local fleet as `lorafleet up --no-tls` starts it (the random demo model), plus what
    the documents that call a fleet assume: a gateway key, the tenant acme's key and its
    adapter acme/support, and a key to revoke."""
    root = tmp_path_factory.mktemp("docs-fleet")
    env, mark = marked_env()
    ports = {name: free_port() for name in ("cp", "gateway", "http")}
    up = subprocess.Popen(
        [sys.executable, "-m", "lorafleet.clients.cli", "up", "--random-model", "--no-tls",
         "--workers", "1", "--kv-cache-bytes", str(64 << 20), "--data-dir", str(root),
         "--adapter-root", str(root), "--controlplane-port", str(ports["cp"]),
         "--gateway-port", str(ports["gateway"]), "--http-port", str(ports["http"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in up.stdout:
        lines.append(line)
        if "lorafleet is up" in line:
            break
    assert "lorafleet is up" in lines[-1], "".join(lines)
    admin = re.search(r"admin: +(\S+)", "".join(lines)).group(1)
    controlplane = f"127.0.0.1:{ports['cp']}"
    common = ["--controlplane", controlplane, "--api-key", admin]
    shutil.copytree(root / "random-model" / "adapters" / "demo__pirate", root / "support")

    def lorafleet(*argv: str) -> str:
        done = subprocess.run([sys.executable, "-m", "lorafleet.clients.cli", *argv, *common],
                              capture_output=True, text=True, timeout=60, check=True)
        return done.stdout

    def new_key(*argv: str) -> str:
        return re.search(r"shown once.*: (\S+)", lorafleet("key", "create", *argv)).group(1)

    keys = {"GATEWAY_KEY": new_key("--role", "gateway"),
            "TENANT_KEY": new_key("--role", "tenant", "--tenant", "acme",
                                  "--can-create-versions")}
    revocable = new_key("--role", "tenant", "--tenant", "initech").split("_")[1]
    lorafleet("adapter", "create", "acme/support", "--base-model", "random-demo")
    lorafleet("adapter", "version", "acme/support", str(root / "support"))
    lorafleet("adapter", "rollout", "acme/support", "1=100")
    yield Given(env={**keys, "LORAFLEET_API_KEY": admin, "LORAFLEET_CONTROLPLANE": controlplane},
                replace={"cp-0:50051,cp-1:50051": controlplane, "127.0.0.1:50060": controlplane,
                         "1a2b3c4d5e6f": revocable})
    up.terminate()
    up.wait(60)
    kill_marked(mark)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gateway.md", "openai.md", "security.md"])
def test_a_document_that_calls_a_fleet_runs_as_written(name, fleet, tiny, tmp_path):
    _run(Scenario(tmp_path, *tiny, fleet), name)


@pytest.fixture(scope="module")
def tls_up(tiny, tmp_path_factory):
    """`lorafleet up` as `make run` starts it (TLS, keys), its data in ./demo of a scratch
    directory, on the ports the README names (as this run maps them); yields the scenario
    with TENANT_KEY, ADMIN_KEY and WORKER_ADDRESS set as the README asks the reader to."""
    scratch = tmp_path_factory.mktemp("docs-readme")
    scenario = Scenario(scratch, *tiny, Given())
    env, mark = marked_env()
    up = subprocess.Popen(
        [sys.executable, "-m", "lorafleet.clients.cli", "up", "--random-model", "--workers", "1",
         "--kv-cache-bytes", str(64 << 20), "--data-dir", "demo",
         "--gateway-port", scenario.ports["50050"], "--controlplane-port",
         scenario.ports["50051"], "--http-port", scenario.ports["8000"]],
        cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in up.stdout:
        lines.append(line)
        if "lorafleet is up" in line:
            break
    printed = "".join(lines)
    assert "lorafleet is up" in printed, printed
    scenario.given.env.update(
        TENANT_KEY=re.search(r"tenant demo: +(\S+)", printed).group(1),
        ADMIN_KEY=re.search(r"admin: +(\S+)", printed).group(1))
    scenario.given.replace["WORKER_ADDRESS"] = re.search(
        r"worker-0 ready on (\S+)", printed).group(1)
    yield scenario
    up.terminate()
    up.wait(60)
    kill_marked(mark)


@pytest.mark.slow
def test_the_readme_runs_as_written_against_make_run(tls_up):
    _run(tls_up, "README.md")
