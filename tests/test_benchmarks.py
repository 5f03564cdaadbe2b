"""The benchmark suite runs end to end and writes a complete, finite results.json.

``benchmarks/run.py`` runs in a subprocess (tiny sizes, hidden ``--tiny`` flag) so this test
session's x64 setting does not leak into it. No timing assertions: the machines are noisy;
the speed goals live in the benchmark report, not in pass/fail.
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

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"

# Figures that may legitimately be zero (an exact result, a spread of zero, no failures).
NONNEGATIVE = {
    "iqr_s",
    "max_ulp",
    "p99_9_ulp",
    "nonfinite_points",
    "step_rss_increase_kib",
    "transcendental_total",
    "load_average_1_5_15_start",
    "load_average_1_5_15_end",
}
TOP_KEYS = {
    "schema",
    "meta",
    "config",
    "variants",
    "kernel_time",
    "residuals",
    "mlp_temp",
    "mlp_step",
    "mlp_rss",
    "accuracy",
    "evidence",
    "goals",
}
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def _run(tmp_path: Path, *flags: str) -> tuple[dict, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    proc = subprocess.run(
        [sys.executable, str(RUN), "--tiny", "--out", str(tmp_path), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    md = (tmp_path / "results.md").read_text()
    return results, md, proc.stdout


def _numbers(obj, path=()):
    """Every number in the JSON tree, with the key that holds it (bools excluded)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, (*path, str(k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, (*path, i))
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield path, obj


def _key(path):
    return next(p for p in reversed(path) if isinstance(p, str))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return (*_run(out), out)


def test_schema(tiny_run):
    results, md, stdout, out = tiny_run
    assert set(results) == TOP_KEYS
    assert results["schema"] == "stable_layers.benchmarks/1"
    meta = results["meta"]
    for key in ("date_utc", "mode", "command", "machine", "method", "duration_s"):
        assert key in meta
    assert meta["mode"] == "tiny"
    for key in ("cpu", "cores", "backend", "versions", "torch"):
        assert key in meta["machine"]
    assert {"jax", "jaxlib", "flax", "torch"} <= set(meta["machine"]["versions"])

    variants = results["variants"]
    assert {"jax_nn_softplus", "autodiff_xsin", "ours_softplus_output", "identity"} <= set(variants)
    families = {(r["family"], r["dtype"], r["pass"]) for r in results["kernel_time"]}
    assert families == {
        (f, d, p)
        for f in ("softplus", "xsin")
        for d in ("float32", "bfloat16")
        for p in ("fwd", "fwd_bwd")
    }
    for row in results["kernel_time"]:
        assert {"median_s", "gbytes_per_s"} <= set(row["bound"])
        ref = "jax_nn_softplus" if row["family"] == "softplus" else "autodiff_xsin"
        assert row["results"][ref]["ratio"] == 1.0
        for r in row["results"].values():
            assert {"median_s", "ratio", "of_bound", "calls_per_sample", "rounds"} <= set(r)
            assert variants[next(k for k, v in row["results"].items() if v is r)]

    assert results["residuals"]["ours_softplus_output"]["arrays"] == 1
    assert results["residuals"]["jax_nn_softplus"]["arrays"] == 2
    temp = results["mlp_temp"]["temp_bytes"]
    assert set(temp) == set(results["mlp_step"]["results"]) == set(results["mlp_rss"]["results"])
    assert all(set(by) == {str(d) for d in results["mlp_temp"]["depths"]} for by in temp.values())

    for dtype in ("float32", "bfloat16", "float16"):
        for r in results["accuracy"][dtype].values():
            for part in ("forward", "gradient"):
                assert {"max_ulp", "p99_9_ulp", "nonfinite_points", "points"} <= set(r[part])
    for g in results["goals"]:
        assert {"id", "goal", "measured", "target", "holds", "detail"} <= set(g)
        assert isinstance(g["holds"], bool)
        assert g["detail"]
    assert {g["id"].split("_")[0] for g in results["goals"]} >= {"softplus", "mlp", "xsin"}

    assert "## Goals" in md and "## Kernel time" in md and "## Accuracy" in md
    for png in ("scaling.png", "memory_depth.png"):
        assert (out / png).stat().st_size > 1000
    assert "## Goals" in stdout  # the tables are printed too


def test_every_figure_finite_and_positive(tiny_run):
    results = tiny_run[0]
    numbers = list(_numbers({k: v for k, v in results.items() if k != "config"}))
    assert len(numbers) > 200
    for path, value in numbers:
        assert math.isfinite(value), path
        if _key(path) in NONNEGATIVE:
            assert value >= 0, path
        else:
            assert value > 0, path


def test_torch_rows_follow_availability(tiny_run):
    results, md, _, _ = tiny_run
    note = results["meta"]["machine"]["torch"]
    torch_keys = {k for k, v in results["variants"].items() if v["library"] == "torch"}
    if HAVE_TORCH:
        assert torch_keys == {"torch_softplus", "torch_xsin"}
        assert "torch_xsin" in results["accuracy"]["float32"]
    else:
        assert not torch_keys
        assert "skipped" in note and "skipped" in md


def test_torch_hidden_is_skipped_and_said(monkeypatch):
    """With torch hidden (as in CI, where it is not installed) the benchmark says it skips it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _variants
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    monkeypatch.setenv(_variants.NO_TORCH_ENV, "1")
    torch, note = _variants.load_torch()
    assert torch is None and "torch rows skipped" in note
    monkeypatch.delenv(_variants.NO_TORCH_ENV)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    torch, note = _variants.load_torch()
    assert torch is None and "not installed" in note
