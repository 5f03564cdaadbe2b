"""What is compared, read from the registry (tests/registry.py): one list of variants per entry.

Per entry: ours for each residual policy (default first) and ``mode="jvp"``, ours with slope
codes (``bits=``, issue 15) where the entry has a ``"derivative"`` policy, the naive formula
under autodiff, the ``jax.nn`` peer, ``flax.linen``'s function of the same name, torch's
equivalent (when torch imports) and an A/A control: flax's function where it *is* the
reference, else a second copy of the reference. The reference is the peer, or the naive
formula under autodiff for an entry without one.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from collections.abc import Callable
from typing import NamedTuple

import jax
from helpers import output_saving_vjp

NO_TORCH_ENV = "STABLE_LAYERS_BENCH_NO_TORCH"
CODE_BITS = (1, 2, 4, 8)  # every valid bits=; an entry needs a "derivative" policy for them

# The one place that names torch's equivalents; an entry missing here has no torch row.
TORCH = {
    "softplus": ("torch.nn.functional.softplus", lambda t: t.nn.functional.softplus),
    "log_sigmoid": ("torch.nn.functional.logsigmoid", lambda t: t.nn.functional.logsigmoid),
    "xsin": ("torch autograd x*torch.sin(x)", lambda t: lambda x: x * t.sin(x)),
}


class Variant(NamedTuple):
    key: str
    label: str
    fn: Callable
    kind: str  # ours, codes, naive, peer, flax, aa, torch, minimal, identity


IDENTITY = Variant("identity", "identity (no activation)", lambda x: x, "identity")


def minimal(entry, upcast: bool) -> Variant:
    """The entry's hand-written output-saving ``jax.custom_vjp`` (registry ``minimal``)."""
    f = output_saving_vjp(*entry.minimal, upcast=upcast)
    key, note = ("minimal_upcast", ", float32 upcast") if upcast else ("minimal", "")
    return Variant(key, f"minimal output-saving custom_vjp{note}", f, "minimal")


def _naive_label(fn) -> str:
    """ "autodiff <the formula>", read from the registry's lambda where it is one."""
    try:
        m = re.search(r"lambda\s+\w+:\s*(.+?),?\s*$", inspect.getsource(fn).strip())
    except (OSError, TypeError):
        m = None
    return f"autodiff {m.group(1) if m else getattr(fn, '__name__', 'naive formula')}"


def _peer_label(fn) -> str:
    if isinstance(fn, functools.partial):  # jax.nn.gelu(approximate=False), not its repr
        kw = ", ".join(f"{k}={v!r}" for k, v in fn.keywords.items())
        return f"{_peer_label(fn.func)}({kw})"
    name = getattr(fn, "__name__", repr(fn))
    return f"jax.nn.{name}" if getattr(jax.nn, name, None) is fn else name


def for_entry(entry, torch=None, bits=CODE_BITS) -> tuple[list[Variant], str, str]:
    """(variants, reference key, A/A key) of a registry entry; ``bits``: its code rows."""
    out, (default, *_) = [], list(entry.residuals)

    def add(key, label, fn, kind):
        out.append(Variant(key, label, fn, kind))
        return out[-1]

    for p in entry.residuals:
        tag = " (default)" if p == default else ""
        add(f"ours_{p}", f"ours residual={p}{tag}", functools.partial(entry.fn, residual=p), "ours")
    add(
        "ours_jvp",
        f"ours residual={default} mode=jvp",
        functools.partial(entry.fn, mode="jvp"),
        "ours",
    )
    if "derivative" in entry.residuals:  # slope codes keep the "derivative" policy's slope
        for b in bits:
            add(f"bits_{b}", f"ours bits={b}", functools.partial(entry.fn, bits=b), "codes")
    ref = out[0]  # with neither a naive formula nor a peer, ours is its own reference
    if entry.naive is not None:
        ref = add("naive", _naive_label(entry.naive), entry.naive, "naive")
    if entry.peer is not None:
        ref = add("peer", _peer_label(entry.peer), entry.peer, "peer")
    try:
        import flax.linen as nn

        flax_fn = getattr(nn, entry.name, None)
    except ImportError:  # flax is optional
        flax_fn = None
    if flax_fn is not None and flax_fn is ref.fn:
        aa = add("flax", f"flax.linen.{entry.name} (A/A: is {ref.label})", flax_fn, "aa")
    else:
        if flax_fn is not None:
            add("flax", f"flax.linen.{entry.name}", flax_fn, "flax")
        aa = add("aa", f"A/A: {ref.label}, a second copy", ref.fn, "aa")
    if torch is not None and entry.name in TORCH:
        add("torch", TORCH[entry.name][0], TORCH[entry.name][1](torch), "torch")
    return out, ref.key, aa.key


def load_torch():
    """(torch or None, why). Torch is optional; STABLE_LAYERS_BENCH_NO_TORCH=1 hides it."""
    if os.environ.get(NO_TORCH_ENV):
        return None, f"torch rows skipped: hidden by {NO_TORCH_ENV}=1"
    try:
        import torch
    except ImportError as err:
        return None, f"torch rows skipped: torch is not installed ({err})"
    torch.set_num_threads(2)
    return torch, f"torch {torch.__version__} (CPU, {torch.get_num_threads()} threads)"
