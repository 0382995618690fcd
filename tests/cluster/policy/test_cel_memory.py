"""cluster.policy.cel: evaluating the extensions does not grow the process.

cel-expr-python 0.1.3 leaks the arguments of every call of a function implemented in
Python (~400 bytes per ``hasAll`` on a ctx list). Each case runs in a fresh interpreter,
evaluates its expression with a new Activation per call (as a request does) and bounds
the growth of the resident set between the end of a warm-up and the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CALLS = 200_000
WARMUP = 20_000
# A leak of 100 bytes per call would grow 17 MiB over CALLS; allocator noise stays far below.
MAX_GROWTH_BYTES = 4 * 2**20

SCRIPT = """
import gc, json, sys
from wardgate.cluster.policy.cel import Activation, Compiler

def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE")

source, calls, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = {"ctx": {"g": ["dev", "ops", "qa", 1, 2.5], "s": "  Hello, World  ", "n": 7}}
program = Compiler().compile(source)
for _ in range(warmup):
    assert program.evaluate_bool(Activation(ctx)) is True
gc.collect()
before = rss()
for _ in range(calls):
    program.evaluate_bool(Activation(ctx))
gc.collect()
print(json.dumps({"growth": rss() - before}))
"""

EXTENSIONS = {
    "hasAll-literal": '["a", "b"].hasAll("a")',
    "hasAll-ctx": 'ctx.g.hasAll("dev", "ops", 1, 2.5)',
    "hasAny-ctx": 'ctx.g.hasAny("nobody", "qa") && !ctx.g.hasAny(true)',
    "sets": 'sets.contains(ctx.g, ["qa"]) && sets.intersects(ctx.g, [1.0]) && sets.equivalent([1], [1])',
    "strings-case-trim": 'ctx.s.trim().lowerAscii() == "hello, world" && ctx.s.upperAscii().contains("HELLO")',
    "strings-split-join": 'ctx.s.trim().split(", ").join("|") == "Hello|World" && ctx.s.replace("l", "L", 1) != ""',
    "strings-index": 'ctx.s.indexOf("o") == 6 && ctx.s.lastIndexOf("o") == 10 && ctx.s.substring(2, 7) == "Hello"',
    "strings-misc": (
        '"%s-%d".format(["a", ctx.n]) == "a-7" && strings.quote(ctx.s) != "" && ctx.s.charAt(2) == "H"'
        " && ctx.s.reverse().size() == 16"
    ),
}


@pytest.mark.parametrize("source", EXTENSIONS.values(), ids=EXTENSIONS.keys())
def test_extension_calls_do_not_grow_memory(source: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, source, str(CALLS), str(WARMUP)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    growth = json.loads(result.stdout)["growth"]
    per_call = growth / CALLS
    assert growth < MAX_GROWTH_BYTES, f"RSS grew {growth / 2**20:.1f} MiB over {CALLS} calls ({per_call:.0f} B/call)"
