"""Memory: residuals per activation, compiled temp bytes and peak RSS of an MLP training step.

Run as a script (``python _memory.py rss WIDTH BATCH DEPTH KEY...``) it is the child process
that measures peak RSS: it prints one JSON line.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

try:
    from jax.ad_checkpoint import saved_residuals  # public in some releases
except ImportError:  # jax 0.10: private
    from jax._src.ad_checkpoint import saved_residuals

HERE = os.path.dirname(os.path.abspath(__file__))
LR = 1e-3


def residuals(f, n: int = 4096, dtype=jnp.float32) -> dict:
    """Arrays the backward pass of ``f`` keeps for an input of ``n`` elements."""
    x = jnp.linspace(-3, 3, n, dtype=dtype)
    res = saved_residuals(f, x)
    arrays = [(a, d) for a, d in res if a.shape and int(np.prod(a.shape)) > 1]
    nbytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a, _ in arrays)
    return {
        "arrays": len(arrays),
        "bytes_per_element": nbytes / n,
        "what": [f"{a.dtype}{list(a.shape)}: {d.split(' from ')[0]}" for a, d in arrays],
    }


# ----------------------------------------------------------------------------------------
# The MLP: depth x (Linear width->width, activation), loss mean(h^2), plain SGD step.
# ----------------------------------------------------------------------------------------


def init_mlp(width: int, depth: int, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), depth)
    scale = 1.0 / np.sqrt(width)
    return [
        (jax.random.normal(k, (width, width), jnp.float32) * scale, jnp.zeros(width, jnp.float32))
        for k in keys
    ]


def make_step(act):
    def loss(params, x):
        h = x
        for w, b in params:
            h = act(h @ w + b)
        return jnp.mean(h * h)

    def step(params, x):
        value, grads = jax.value_and_grad(loss)(params, x)
        return jax.tree.map(lambda p, g: p - LR * g, params, grads), value

    return step


def batch(width: int, n: int, seed: int = 1):
    return jax.random.normal(jax.random.key(seed), (n, width), jnp.float32)


def temp_bytes(act, width: int, batch_size: int, depth: int) -> dict:
    params = init_mlp(width, depth)
    x = batch(width, batch_size)
    compiled = jax.jit(make_step(act)).lower(params, x).compile()
    ma = compiled.memory_analysis()
    return {"temp_bytes": int(ma.temp_size_in_bytes)}


def step_case(act, width: int, batch_size: int, depth: int):
    """A timing case: one donated training step per call, params fed back."""
    from _timing import Case

    params = init_mlp(width, depth)
    x = batch(width, batch_size)
    jstep = jax.jit(make_step(act), donate_argnums=0)
    state = [params, None]

    def call():
        state[0], state[1] = jstep(state[0], x)

    def sync():
        jax.block_until_ready(state)

    return Case(call, sync)


# ----------------------------------------------------------------------------------------
# Peak RSS of one step, in a child process. All variants run in the same child, one after
# the other: before each step the process is compiled and warm, freed memory is trimmed, the
# kernel's peak-RSS counter is reset (/proc/self/clear_refs "5"), and after the step VmHWM is
# the step's peak. So each figure is the peak while that step ran, not a compile peak.
# ----------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_child(width: int, batch_size: int, depth: int, keys: list[str]) -> dict:
    from _variants import IDENTITY, jax_variants

    variants = {v.key: v for v in [IDENTITY, *jax_variants()]}
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except OSError:
        trim = None
    x = batch(width, batch_size)
    out = {}
    for key in keys:
        params = init_mlp(width, depth)
        jstep = jax.jit(make_step(variants[key].fn))
        compiled = jstep.lower(params, x).compile()
        jax.block_until_ready(compiled(params, x))  # warm: first-run allocations done
        gc.collect()
        if trim is not None:
            trim(0)
        base = _status_kib("VmRSS")
        reset = _reset_peak()
        result = compiled(params, x)
        jax.block_until_ready(result)
        peak = _status_kib("VmHWM")  # without a reset this includes earlier peaks
        del result
        out[key] = {
            "rss_before_kib": base,
            "peak_rss_kib": peak,
            "step_rss_increase_kib": peak - base,
            "peak_reset_per_step": reset,
        }
    return out


def peak_rss(width: int, batch_size: int, depth: int, keys: list[str]) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "_memory.py"), "rss", str(width)]
    cmd += [str(batch_size), str(depth), *keys]
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"RSS child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "rss":
    w, b, d = (int(a) for a in sys.argv[2:5])
    print(json.dumps(_rss_child(w, b, d, sys.argv[5:])))
