"""The benchmark suite runs end to end and reports every registry entry in every table.

``benchmarks/run.py`` runs in a subprocess (the hidden ``--tiny`` mode: every table, fewest
variants) so this session's x64 setting does not leak into it. No timing assertions: the
machines are noisy; the goals live in the report, not in pass/fail.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import registry

pytestmark = pytest.mark.slow  # one benchmark run in a subprocess feeds every test here

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import _variants
finally:
    sys.path.remove(str(ROOT / "benchmarks"))
NAMES = {e.name for e in registry.ENTRIES}
HAVE_TORCH = importlib.util.find_spec("torch") is not None
# Figures that may be zero: an exact result, a spread of zero, no failures, no load.
NONNEGATIVE = {"iqr_s", "max_ulp", "p99_9_ulp", "nonfinite_points", "load_average_start"}
NONNEGATIVE |= {"load_average_end"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text(), out


def test_schema(tiny_run):
    res, md, out = tiny_run
    assert res["schema"] == "stable_layers.benchmarks/2"
    assert set(res) == {
        "schema", "meta", "config", "entries", "accuracy", "mlp_temp", "hlo", "kernel_time",
        "mlp_step", "goals",
    }  # fmt: skip
    meta = res["meta"]
    for key in ("date_utc", "command", "git_commit", "machine", "versions", "torch", "method"):
        assert meta[key]
    assert meta["mode"] == "tiny" and "--tiny" in meta["command"]
    assert {"jax", "jaxlib", "flax", "numpy", "torch", "stable_layers"} <= set(meta["versions"])
    for g in res["goals"]:
        assert {"id", "goal", "measured", "target", "holds", "detail"} <= set(g)
        assert isinstance(g["holds"], bool)
    for png in ("scaling.png", "memory_depth.png"):
        assert (out / png).stat().st_size > 1000
    for section in ("## Goals", "## Kernel time", "## MLP training step", "## Accuracy", "## HLO"):
        assert section in md


def test_every_entry_in_every_table(tiny_run):
    res, md, _ = tiny_run
    assert set(res["entries"]) == NAMES
    for d in ("float32", "bfloat16", "float16"):
        assert set(res["accuracy"][d]) == set(res["mlp_temp"]["bytes"][d]) == NAMES
    assert set(res["kernel_time"]) == set(res["mlp_step"]["results"]) == set(res["hlo"]) == NAMES
    goal_ids = {g["id"] for g in res["goals"]}
    for e in registry.ENTRIES:
        info = res["entries"][e.name]
        ours, ref, aa = f"ours_{next(iter(e.residuals))}", info["reference"], info["aa"]
        assert info["variants"][ref]["kind"] == ("peer" if e.peer else "naive")
        for d, rows in res["kernel_time"][e.name].items():
            for r in rows:
                assert {ours, ref, aa} <= set(r["results"])
                assert r["results"][ref]["ratio"] == 1.0
            assert f"### {e.name}, {d}" in md
            assert f"time_{e.name}_{d}" in goal_ids
        assert {"identity", ours, ref, aa} <= set(res["mlp_step"]["results"][e.name])
        for d, by in res["mlp_temp"]["bytes"].items():
            assert {"identity", ours, ref} <= set(by[e.name])
            has_rule = e.minimal is not None
            assert ("minimal" in by[e.name]) == has_rule
        assert {ours, ref} <= set(res["accuracy"]["float32"][e.name])
        assert {f"step_{e.name}", f"memory_{e.name}_vs_{ref}"} <= goal_ids
        assert f"| {e.name} | " in md


def _numbers(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, (*path, str(k)))
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v, path)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield path, obj


def test_every_figure_finite_and_positive(tiny_run):
    numbers = list(_numbers({k: v for k, v in tiny_run[0].items() if k != "config"}))
    assert len(numbers) > 200
    for path, value in numbers:
        assert math.isfinite(value), path
        assert value >= 0 if path[-1] in NONNEGATIVE else value > 0, path


def test_torch_rows_follow_availability(tiny_run):
    res, md, _ = tiny_run
    for name, info in res["entries"].items():
        has = "torch" in info["variants"]
        assert has == (HAVE_TORCH and name in _variants.TORCH)
        assert has == ("torch" in res["accuracy"]["float32"][name])
    if not HAVE_TORCH:
        assert "skipped" in res["meta"]["torch"] and "skipped" in md


def test_torch_hidden_is_skipped_and_said(monkeypatch):
    """With torch hidden (as in CI, where it is not installed) the benchmark says it skips it."""
    monkeypatch.setenv(_variants.NO_TORCH_ENV, "1")
    torch, note = _variants.load_torch()
    assert torch is None and "torch rows skipped" in note
    monkeypatch.delenv(_variants.NO_TORCH_ENV)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    torch, note = _variants.load_torch()
    assert torch is None and "not installed" in note
