"""The examples in README.md and docs/*.md are true: what they show, the code accepts.

- ```yaml blocks with `kind:` are applied with the real `wardgatectl apply` to a real cluster process
  (schema, CEL and Rego compilation, Lua compilation) and must apply without warnings. Blocks without
  `kind:` are either fragments of a resource (top-level `rules`, `condition` or `http`), applied inside
  the smallest resource that holds them, or a foreign tool's config listed in FOREIGN_YAML_KEYS.
- ```toml blocks are `cluster.toml` excerpts, validated by ClusterSettings.
- `wardgatectl`, `wardgate`, `wardgate-cluster` and `wardgate-agent` lines in shell blocks, and the
  synopsis blocks (untagged blocks where every line is one of those programs), are checked against
  the programs' own argparse parsers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

import wardgate.agent.main
import wardgate.cluster.main
from tests.conftest import REPO, RunningCluster, start_cluster, stop_cluster
from wardgate.client import cli, ctl
from wardgate.cluster.config import ClusterSettings

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

SECRETS = ("gemini-api-key", "openai-api-key", "deepseek-api-key", "lab-provider-key", "corp-oidc", "docs-mcp-token")
"""The Secrets the examples and configs/ name, created first (as the README's first
`wardgatectl create secret` does), so that a reference to a missing Secret stays a failure."""

CONFIGS = (REPO / "configs" / "resources", REPO / "configs" / "lab", REPO / "configs" / "mcp")

FOREIGN_YAML_KEYS = frozenset({"scrape_configs"})
"""Top-level keys of YAML blocks that configure other tools (Prometheus), not Wardgate."""

SHELL_LANGUAGES = frozenset({"sh", "shell", "bash", "console"})

FRAGMENT_WRAPPERS: dict[str, Callable[[str, Any], dict[str, Any]]] = {
    "rules": lambda name, rules: {"kind": "Policy", "metadata": {"name": name}, "spec": {"rules": rules}},
    "condition": lambda name, condition: {
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"rules": [{"effect": "ALLOW", "condition": condition}]},
    },
    "http": lambda name, http: {
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"config": {"upstream": {"url": "http://upstream.invalid"}, "http": http}},
    },
    "config": lambda name, config: {
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"config": {"upstream": {"url": "http://upstream.invalid"}, **config}},
    },
}
"""A fragment's top-level key -> the smallest resource around it (named after where it is)."""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    """Line of the opening fence, from 1."""
    language: str
    text: str
    before: str
    """The paragraph right before the block."""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def fenced_blocks(path: Path, text: str | None = None) -> list[Block]:
    lines = (path.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,})\s*([\w+-]*)", lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening.group(2)
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        last = i - 1
        while last >= 0 and not lines[last].strip():
            last -= 1
        first = last
        while first >= 0 and lines[first].strip():
            first -= 1
        before = " ".join(lines[first + 1 : last + 1])
        body = "\n".join(line.removeprefix(opening.group(1)) for line in lines[i + 1 : end]) + "\n"
        blocks.append(Block(path, i + 1, opening.group(3).lower(), body, before))
        i = end + 1
    return blocks


def all_blocks(*languages: str) -> list[Block]:
    return [b for path in DOCUMENTS for b in fenced_blocks(path) if b.language in languages]


# --- YAML: resources and fragments ------------------------------------------------------------------


def _is_resource_block(block: Block) -> bool:
    return re.search(r"^\s*kind:", block.text, re.MULTILINE) is not None


def manifest_of(block: Block) -> str | None:
    """The manifest to apply for a YAML block, or None for a foreign tool's config. A block that is
    neither a resource, a known fragment nor foreign is an error: say what it is."""
    if _is_resource_block(block):
        return block.text
    fragment = yaml.safe_load(block.text)
    if not isinstance(fragment, dict) or not fragment:
        raise AssertionError(f"{block.where}: a YAML block that is not a mapping")
    keys = set(fragment)
    if keys <= FOREIGN_YAML_KEYS:
        return None
    if len(keys) != 1 or not keys <= set(FRAGMENT_WRAPPERS):
        raise AssertionError(
            f"{block.where}: YAML block with top-level {sorted(keys)}: give it a `kind:`, or teach this "
            "test how to wrap it (FRAGMENT_WRAPPERS) or that it is not Wardgate's (FOREIGN_YAML_KEYS)"
        )
    (key,) = keys
    name = f"docs-{block.path.stem.lower()}-{block.line}"
    return yaml.safe_dump(FRAGMENT_WRAPPERS[key](name, fragment[key]), sort_keys=False)


def _declared(manifest: str) -> list[str]:
    return [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in yaml.safe_load_all(manifest) if d]


YAML_BLOCKS = all_blocks("yaml", "yml")


@pytest.fixture(scope="module")
def docs_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    """A cluster with the README's set-up done: the Secrets created, configs/ applied (they must apply
    without warnings too). The examples then apply on top of it, as a reader of the README would."""
    running = start_cluster(tmp_path_factory.mktemp("docs") / "home")
    try:
        for name in SECRETS:
            running.ctl("create", "secret", name, "--value", f"{name}-value", check=True)
        for directory in CONFIGS:
            result = running.ctl("apply", "-f", str(directory), check=True)
            assert "warning:" not in result.stderr, f"{directory}: applied with warnings:\n{result.stderr}"
        yield running
    finally:
        stop_cluster(running)


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.where)
def test_yaml_example_applies(block: Block, docs_cluster: RunningCluster, tmp_path: Path) -> None:
    manifest = manifest_of(block)
    if manifest is None:
        return  # another tool's config: nothing of Wardgate's to check
    path = tmp_path / f"{block.path.stem}-{block.line}.yaml"
    path.write_text(manifest)
    result = docs_cluster.ctl("apply", "-f", str(path))
    assert result.returncode == 0, f"{block.where}: wardgatectl apply failed:\n{result.stderr}"
    assert "warning:" not in result.stderr, f"{block.where}: applied with warnings:\n{result.stderr}"
    applied = [line.split()[0] for line in result.stdout.splitlines()]
    assert applied == _declared(manifest)


# --- TOML: cluster.toml excerpts --------------------------------------------------------------------


TOML_BLOCKS = all_blocks("toml")


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=lambda b: b.where)
def test_toml_example_is_valid_cluster_settings(block: Block) -> None:
    raw = tomllib.loads(block.text)
    settings = ClusterSettings.model_validate({"domain": "example.com", **raw})
    if "defaults shown" in block.before:
        assert settings == ClusterSettings(domain="example.com"), f"{block.where} claims to show the defaults"


# --- Command lines ----------------------------------------------------------------------------------


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _parser_built_in(main: Callable[[list[str]], int]) -> argparse.ArgumentParser:
    """The parser a `main()` builds inline (wardgate-cluster, wardgate-agent), caught at `parse_args`
    before it does anything."""

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Captured(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            main([])
        except _Captured as caught:
            return caught.parser
    raise AssertionError(f"{main} did not parse its arguments")


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "wardgatectl": ctl.build_parser,
    "wardgate": cli.build_parser,
    "wardgate-cluster": lambda: _parser_built_in(wardgate.cluster.main.main),
    "wardgate-agent": lambda: _parser_built_in(wardgate.agent.main.main),
}

_SYNOPSIS_TOKEN = re.compile(r"^[\[(]|[\])]$|^\|$|\.\.\.|^[\w.-]+(\|[\w.-]+)+$")
"""Usage notation: `[--opt]`, `(A | B)`, `...`, `one|two`. A line with any of it is a synopsis."""


@dataclass(frozen=True)
class CommandLine:
    block: Block
    argv: tuple[str, ...]
    """Program name first, `sudo` and directories stripped."""

    @property
    def synopsis(self) -> bool:
        return any(_SYNOPSIS_TOKEN.search(token) for token in self.argv[1:])

    def __str__(self) -> str:
        return f"{self.block.where} {' '.join(self.argv)}"


def _logical_lines(text: str) -> Iterator[str]:
    """Lines joined where a quote or a trailing backslash continues them."""
    pending = ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:
            continue
        yield pending
        pending = ""
    if pending:
        yield pending


def _split_commands(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in (";", "&&", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _ours(argv: list[str]) -> list[str] | None:
    while argv and argv[0] == "sudo":
        argv = argv[1:]
    if argv and Path(argv[0]).name in PARSERS:
        return [Path(argv[0]).name, *argv[1:]]
    return None


def command_lines(block: Block) -> list[CommandLine]:
    found: list[CommandLine] = []
    for line in _logical_lines(block.text):
        for argv in _split_commands(line):
            ours = _ours(argv)
            if ours is not None:
                found.append(CommandLine(block, tuple(ours)))
    return found


def _is_synopsis_block(block: Block) -> bool:
    lines = [line for line in block.text.splitlines() if line.strip()]
    return bool(lines) and all(line.split()[0] in PARSERS for line in lines)


COMMAND_LINES = [
    command
    for block in all_blocks(*SHELL_LANGUAGES, "")
    if block.language in SHELL_LANGUAGES or _is_synopsis_block(block)
    for command in command_lines(block)
]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parsers: list[argparse.ArgumentParser]) -> dict[str, argparse.Action]:
    return {option: action for p in parsers for action in p._actions for option in action.option_strings}


def check_names(argv: tuple[str, ...]) -> list[str]:
    """Every subcommand and flag the line names exists, and a flag's shown values are its choices."""
    chain = [PARSERS[argv[0]]()]
    tokens = [token.strip("[]()") for token in argv[1:]]
    problems: list[str] = []
    for token in tokens:
        if token.startswith("-") or not token:
            continue
        subcommands = _subparsers(chain[-1])
        if not subcommands:
            break
        if token not in subcommands:
            problems.append(f"no subcommand {token!r} (known: {', '.join(subcommands)})")
            break
        chain.append(subcommands[token])
    options = _options(chain)
    for i, token in enumerate(tokens):
        flag = re.match(r"^--?[A-Za-z][\w-]*", token)
        if flag is None:
            continue
        action = options.get(flag.group())
        if action is None:
            problems.append(f"no option {flag.group()} for {' '.join(p.prog for p in chain[-1:])}")
            continue
        value = token.partition("=")[2] or (tokens[i + 1] if i + 1 < len(tokens) and action.nargs != 0 else "")
        if action.choices is not None and value and not value.startswith("-"):
            for choice in value.split("|"):
                if choice not in action.choices:
                    problems.append(f"{flag.group()} {choice!r} is not one of {list(action.choices)}")
    return problems


def check_parses(argv: tuple[str, ...]) -> str | None:
    """None when the program's parser accepts the whole line, else argparse's message."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            PARSERS[argv[0]]().parse_args(list(argv[1:]))
    except SystemExit as exc:
        if exc.code != 0:
            return errors.getvalue().strip()
    return None


@pytest.mark.parametrize("command", COMMAND_LINES, ids=str)
def test_command_line_matches_the_cli(command: CommandLine) -> None:
    assert check_names(command.argv) == [], str(command)
    if not command.synopsis:
        assert check_parses(command.argv) is None, str(command)


# --- The extraction itself --------------------------------------------------------------------------

SAMPLE = """\
Intro.

The defaults shown here:

```toml
[tunnel]
```

```yaml
kind: Policy
metadata: {name: p}
```

```yaml
rules: []
```

```sh
export X=1
sudo .venv/bin/wardgatectl get svc -o yaml   # list them
wardgate disconnect; wardgate logout
```

```
wardgatectl get KIND [NAME] [-o table|yaml|json]
```
"""


def test_extraction_finds_blocks_fragments_and_commands(tmp_path: Path) -> None:
    blocks = fenced_blocks(tmp_path / "x.md", SAMPLE)
    assert [(b.line, b.language) for b in blocks] == [(5, "toml"), (9, "yaml"), (14, "yaml"), (18, "sh"), (24, "")]
    assert "defaults shown" in blocks[0].before
    assert _is_resource_block(blocks[1]) and not _is_resource_block(blocks[2])
    assert [c.argv for c in command_lines(blocks[3])] == [
        ("wardgatectl", "get", "svc", "-o", "yaml"),
        ("wardgate", "disconnect"),
        ("wardgate", "logout"),
    ]
    (synopsis,) = command_lines(blocks[4])
    assert _is_synopsis_block(blocks[4]) and synopsis.synopsis


def test_the_checks_catch_unknown_names_and_values() -> None:
    assert check_names(("wardgatectl", "get", "svc", "-o", "wide")) == [
        "-o 'wide' is not one of ['table', 'yaml', 'json']"
    ]
    assert check_names(("wardgatectl", "create", "token", "x")) != []
    assert check_names(("wardgate", "connect", "[--detached]")) == ["no option --detached for wardgate connect"]
    assert check_names(("wardgate-cluster", "run", "--home", "DIR", "[--workers", "N]")) == []
    assert check_parses(("wardgatectl", "create", "credential", "c", "--user", "u")) is not None
    assert check_parses(("wardgate-agent", "--config", "/etc/wardgate/agent.toml")) is None
