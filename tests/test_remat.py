"""The memory guide's remat section (docs/memory.md): every snippet runs and its claims hold.

The snippets of "Remat policies that keep only stable_layers' arrays" run in a subprocess
with a clean JAX environment (marked slow, as the other page runs; this process has x64
enabled by conftest.py, which would make the models float64 and double every figure), in
page order in one namespace, as
tests/test_docs.py runs a whole page. Each snippet asserts its own claims (what
``print_saved_residuals`` lists, the temp memory a policy costs, the matmuls it recomputes,
the offloaded gradient); the tests here check that each ran, that the figures the guide's
tables quote are what the snippets printed, and that the offload snippet's skip on CPU is
printed, not silent. Then, in process: every public activation's ``.name`` is its checkpoint
name and drives a policy.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from helpers import saved_residuals

import stable_layers as sl

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "memory.md"
HEADING = "## Remat policies that keep only `stable_layers`' arrays"
FENCE = re.compile(r"^```python\n(.*?)^```[ \t]*$", re.S | re.M)

DRIVER = r"""
import contextlib, io, json, sys, traceback
blocks = json.loads(sys.stdin.read())
namespace, results = {}, []
for code in blocks:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<docs/memory.md>", "exec"), namespace)
        error = None
    except Exception:
        error = traceback.format_exc()
    results.append({"stdout": out.getvalue(), "error": error})
    if error:
        break
import jax
print(json.dumps({"backend": jax.default_backend(), "results": results}))
"""


def section() -> str:
    text = GUIDE.read_text()
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    return text[start : None if end < 0 else end]


BLOCKS = FENCE.findall(section())
TITLES = ["setup", "jax.checkpoint", "equinox", "linen", "nnx", "offload", "forward count"]


def test_the_section_has_one_snippet_per_framework_and_policy():
    assert len(BLOCKS) == len(TITLES)
    for block, needle in [
        (BLOCKS[1], "jax.checkpoint(body, policy=policy)"),
        (BLOCKS[2], "eqx.filter_checkpoint(policy=policy)"),
        (BLOCKS[3], "nn.remat(LinenBlock, policy=policy)"),
        (BLOCKS[4], "nnx.remat(policy=policy)"),
        (BLOCKS[5], "save_and_offload_only_these_names("),
    ]:
        assert needle in block
    # Names come from the .name attribute, not from strings.
    assert "save_only_these_names(sl.silu.name)" in BLOCKS[0]


@pytest.fixture(scope="module")
def ran():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", DRIVER],
        input=json.dumps(BLOCKS),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(TITLES)), ids=TITLES)
def test_snippet_runs_and_its_claims_hold(ran, index):
    results = ran["results"]
    assert index < len(results), "an earlier snippet failed"
    assert results[index]["error"] is None, results[index]["error"]


def _table(after: str) -> list[list[str]]:
    """The cells of the first markdown table after the text ``after`` in the section."""
    text = section()
    rows = []
    start = text.rindex("\n", 0, text.index(after)) + 1  # from the line that holds it
    for line in text[start:].splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # less the header and the rule


@pytest.mark.slow
def test_the_memory_table_quotes_what_the_snippet_printed(ran):
    printed = {}
    for line in ran["results"][1]["stdout"].splitlines():
        name, *values = line.split()
        printed[name] = [float(v) for v in values]
    rows = {r[0].strip("`"): r[1:] for r in _table("Measured (CPU")}
    assert set(rows) == set(printed) == {"sl.silu", "jax.nn.silu"}
    for name, cells in rows.items():
        quoted = [float(re.match(r"\**([0-9.]+)", c).group(1)) for c in cells]
        assert quoted == printed[name], (name, quoted, printed[name])


@pytest.mark.slow
def test_the_offload_snippet_says_why_it_skips_on_cpu(ran):
    out = ran["results"][5]["stdout"]
    if ran["backend"] == "cpu":
        assert "offload memory check skipped: the CPU backend has no separate host memory" in out
    else:
        assert "host temp" in out


@pytest.mark.slow
def test_the_forward_count_table_is_what_the_snippet_counted(ran):
    counted = {}
    for line in ran["results"][6]["stdout"].splitlines():
        label, rest = re.match(r"(.*?) (\(.*)", line).groups()
        counted[label] = [int(v) for v in re.findall(r"\d+", rest)]
    rows = _table("| | by callback")
    assert len(rows) == len(counted) == 6
    for (label, by_callback, compiled), (printed_label, numbers) in zip(
        rows, counted.items(), strict=True
    ):
        quoted = [int(v) for v in re.findall(r"\d+", by_callback + " " + compiled)]
        assert quoted == numbers, (label, printed_label)
    # The forward value runs once in every case, both ways of counting; under remat with a
    # kept slope the rule's forward pass runs twice at the JAX level (JAX issue 21303), once
    # in the compiled program.
    assert all(n[0] == 1 and n[2] == 1 and n[3] == 1 for n in counted.values())
    assert counted["jax.checkpoint, derivative"][1] == 2


# ----------------------------------------------------------------------------------------
# Every public activation's .name drives a policy: in process, with the registry-free list of
# public functions, so a new activation is covered the day it is exported.
# ----------------------------------------------------------------------------------------

NAMED = [n for n in sl.__all__ if hasattr(getattr(sl, n), "name") and n != "Activation"]
# Required arguments beyond x (snake's alpha), as Python floats: compile-time constants.
EXTRA = {"snake": {"alpha": 0.5}}


def test_every_public_activation_has_its_checkpoint_name():
    assert {"softplus", "log_sigmoid", "xsin", "gelu", "silu"} <= set(NAMED)
    for name in NAMED:
        assert getattr(sl, name).name == f"stable_layers.{name}"
    made = sl.custom_activation(jnp.tanh, derivative=lambda x: 1 - jnp.tanh(x) ** 2, name="my.t")
    assert made.name == "my.t"


@pytest.mark.parametrize("name", NAMED)
def test_save_only_the_name_keeps_what_the_activation_keeps(name):
    """Under save_only_these_names(fn.name), a checkpointed call keeps the arrays the rule
    keeps without remat (the same count, x's shape), and a policy naming nothing keeps none."""
    fn = getattr(sl, name)
    params = inspect.signature(fn).parameters
    extra = {k: v for k, v in EXTRA.get(name, {}).items() if k in params}
    x = jnp.linspace(0.5, 3.0, 64, dtype=jnp.float32).reshape(8, 8)

    def f(x):
        return jnp.sum(fn(jnp.sin(x), **extra) ** 2)

    def kept(g):
        return [a for a, d in saved_residuals(g, x) if a.shape == x.shape and "argument" not in d]

    plain = len(kept(lambda x: jnp.sum(fn(x, **extra))))
    ours = jax.checkpoint(f, policy=jax.checkpoint_policies.save_only_these_names(fn.name))
    other = jax.checkpoint(f, policy=jax.checkpoint_policies.save_only_these_names("other"))
    assert plain >= 1
    assert len(kept(ours)) == plain, (name, kept(ours))
    assert kept(other) == []
