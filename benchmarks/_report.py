"""The goals, the markdown report and the plots, computed from the results dict alone."""

from __future__ import annotations

import math
import os

MIB = 1 << 20
# Goals are ratios of ours (default policy) to a reference; an entry not named has 1.0.
TIME_TARGET = {"xsin": 0.5}  # kernel fwd+bwd / the reference, every timed dtype
TORCH_TARGET = {"xsin": 1.0}  # kernel fwd+bwd / torch autograd, float32
STEP_TARGET = {"xsin": 0.95}  # MLP training step / the same step with the reference (default 1.05)
IDENTITY_TARGET = 1.05  # float32 MLP temp memory / identity, for an output-saving default
# Slope codes (issue 15), for every entry with "ours bits=k" rows.
CODE_TIME_TARGET = 1.3  # fwd+bwd / the same entry's exact "derivative" policy, 2^20 and up
CODE_STEP_TARGET = 1.0  # MLP step / the entry's reference (jax.nn.silu for silu)
CODE_MEMORY_VS_REF = {"silu": 0.5, "gelu": 0.5}  # float32 MLP temp / the peer, every bits
CODE_MEMORY_VS_REF_BITS = {"xsin": {8: 0.7}}  # ... for these bits only (autodiff x*sin(x))
CODE_IDENTITY_SLACK = 1.10  # every dtype: <= 1.10 identity + the codes + one float32 layer
GOAL_KEYS = ("id", "goal", "measured", "target", "holds", "noise_floor", "detail")


def _geo(xs):
    xs = list(xs)
    return math.exp(sum(map(math.log, xs)) / len(xs))


def _exp2(n):
    return f"2^{n.bit_length() - 1}"


def _time(s):
    return f"{s:.2f} s" if s >= 0.1 else f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} µs"


def _shape(d):
    return f"{d['depth']} layers, width {d['width']}, batch {d['batch']}"


def _ulps(a):
    nf = a["nonfinite_points"]
    return f"{a['max_ulp']:.2f} ({a['p99_9_ulp']:.2f})" + (f", nonfinite {nf}" if nf else "")


def goals(res) -> list[dict]:
    out = []

    def add(gid, goal, m, t, detail, noise=None):
        out.append(dict(zip(GOAL_KEYS, (gid, goal, m, t, bool(m <= t), noise, detail))))

    st = res["mlp_step"]
    for name, info in res["entries"].items():
        ref, aa, lab = info["reference"], info["aa"], info["variants"]
        ours = next(k for k, v in lab.items() if v["kind"] == "ours")  # the default policy
        what, rl = f"{name} default ({ours[5:]})", lab[ref]["label"]
        for d, rows in res["kernel_time"][name].items():
            big = [r for r in rows if r["elements"] >= res["config"]["goal_from"]] or rows[-1:]
            noise = abs(_geo(r["results"][aa]["ratio"] for r in big) - 1)
            t, cells = TIME_TARGET.get(name, 1.0), [r["results"] for r in big]
            detail = "; ".join(
                f"{_exp2(r['elements'])}: {c[ours]['ratio']:.2f}x, of bound "
                f"{c[ours]['of_bound']:.2f} (reference {c[ref]['of_bound']:.2f})"
                for r, c in zip(big, cells)
            )
            m = _geo(c[ours]["ratio"] for c in cells)
            add(f"time_{name}_{d}", f"{what} fwd+bwd <= {t}x {rl} ({d})", m, t, detail, noise)
            if name in TORCH_TARGET and d == "float32" and "torch" in cells[0]:
                rs = [c[ours]["median_s"] / c["torch"]["median_s"] for c in cells]
                goal = f"{what} fwd+bwd <= {TORCH_TARGET[name]}x {lab['torch']['label']} ({d})"
                detail = "; ".join(f"{_exp2(r['elements'])}: {x:.2f}x" for r, x in zip(big, rs))
                add(f"torch_{name}_{d}", goal, _geo(rs), TORCH_TARGET[name], detail, noise)
        s, t = st["results"][name], STEP_TARGET.get(name, 1.05)
        detail = f"{_time(s[ours]['median_s'])} vs {_time(s[ref]['median_s'])}, identity "
        detail += _time(s["identity"]["median_s"])
        noise = abs(s[aa]["ratio"] - 1)
        add(
            f"step_{name}",
            f"{what} MLP step time <= {t}x {rl} (float32)",
            s[ours]["ratio"],
            t,
            detail,
            noise,
        )
        mem = {d: by[name] for d, by in res["mlp_temp"]["bytes"].items()}
        against = [(ref, rl)] + [("minimal", "minimal custom_vjp")] * ("minimal" in mem["float32"])
        for key, label in against:
            rs = {
                d: m[ours] / min(v for k, v in m.items() if k.startswith(key))
                for d, m in mem.items()
            }
            detail = ", ".join(f"{d} {x:.2f}x" for d, x in rs.items())
            goal = f"{what} MLP temp memory <= 1.0x {label}, every dtype"
            add(f"memory_{name}_vs_{key}", goal, max(rs.values()), 1.0, detail)
        _code_goals(res, name, info, add)
        if ours == "ours_output":
            m = mem["float32"]
            detail = f"{m[ours] / MIB:.1f} MiB vs {m['identity'] / MIB:.1f} MiB"
            goal = f"{what} MLP temp memory <= {IDENTITY_TARGET}x identity (float32)"
            add(
                f"memory_{name}_vs_identity", goal, m[ours] / m["identity"], IDENTITY_TARGET, detail
            )
    return out


def _code_goals(res, name, info, add) -> None:
    """Issue 15's goals of an entry's slope-code rows (none without them), each via ``add``."""
    lab, ref, aa = info["variants"], info["reference"], info["aa"]
    codes = [k for k, v in lab.items() if v["kind"] == "codes"]
    if not codes or "ours_derivative" not in lab:
        return
    exact, rl = "ours_derivative", lab[ref]["label"]
    for d, rows in res["kernel_time"][name].items():
        big = [r for r in rows if r["elements"] >= res["config"]["goal_from"]] or rows[-1:]
        noise = abs(_geo(r["results"][aa]["ratio"] for r in big) - 1)
        for k in codes:
            rs = [r["results"][k]["median_s"] / r["results"][exact]["median_s"] for r in big]
            detail = "; ".join(f"{_exp2(r['elements'])}: {x:.2f}x" for r, x in zip(big, rs))
            goal = f"{name} {lab[k]['label'][5:]} fwd+bwd <= {CODE_TIME_TARGET}x residual="
            goal += f"derivative ({d})"
            add(f"time_{name}_{k}_{d}", goal, _geo(rs), CODE_TIME_TARGET, detail, noise)
    s = res["mlp_step"]["results"][name]
    for k in codes:
        detail = f"{_time(s[k]['median_s'])} vs {_time(s[ref]['median_s'])}"
        goal = f"{name} {lab[k]['label'][5:]} MLP step time <= {CODE_STEP_TARGET}x {rl} (float32)"
        add(
            f"step_{name}_{k}",
            goal,
            s[k]["ratio"],
            CODE_STEP_TARGET,
            detail,
            abs(s[aa]["ratio"] - 1),
        )
    mt = res["mlp_temp"]
    layer = mt["width"] * mt["batch"]
    for k in codes:
        bits = int(k.split("_")[1])
        m = mt["bytes"]["float32"][name]
        target = CODE_MEMORY_VS_REF.get(name, CODE_MEMORY_VS_REF_BITS.get(name, {}).get(bits))
        if target is not None:
            detail = f"{m[k] / MIB:.1f} MiB vs {m[ref] / MIB:.1f} MiB"
            goal = f"{name} bits={bits} MLP temp memory <= {target}x {rl} (float32)"
            add(f"memory_{name}_{k}_vs_{ref}", goal, m[k] / m[ref], target, detail)
        rs = {}
        for d, by in mt["bytes"].items():
            allowed = CODE_IDENTITY_SLACK * by[name]["identity"]
            allowed += mt["depth"] * layer * bits / 8 + 4 * layer
            rs[d] = by[name][k] / allowed
        detail = ", ".join(f"{d} {x:.2f}x" for d, x in rs.items())
        goal = f"{name} bits={bits} MLP temp memory <= {CODE_IDENTITY_SLACK}x identity + codes "
        goal += "+ one float32 layer, every dtype"
        add(f"memory_{name}_{k}_vs_identity", goal, max(rs.values()), 1.0, detail)


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]) + "\n"


def markdown(res) -> str:
    m, ents = res["meta"], res["entries"]
    mach, dirty = m["machine"], m["uncommitted_changes"]
    L = [
        "# stable_layers benchmarks\n",
        f"{m['date_utc']} · `{m['command']}` ({m['mode']} run, {m['duration_s'] / 60:.1f} min)"
        f" · {mach['cpu']}, {mach['cores']} cores, {mach['platform']} · backend "
        f"{mach['backend']} · " + ", ".join(f"{k} {x}" for k, x in m["versions"].items()) + " · "
        f"load average {m['load_average_start'][0]:.2f} at start, {m['load_average_end'][0]:.2f}"
        f" at end.\n\nMeasured at commit `{m['git_commit'][:12]}`"
        + (f" with uncommitted changes: {'; '.join(dirty)}" if dirty else " (clean)")
        + f". {m['torch']}.\n",
        "## Goals\n",
        "Ratios of ours (default policy) to a reference, all in one interleaved run. A/A: the "
        "same statistic for the A/A control (one function timed as two), the noise floor; "
        "'beyond' says whether the margin to the target exceeds it.\n",
    ]
    rows = []
    for g in res["goals"]:
        nf = g["noise_floor"]
        aa = (
            "-"
            if nf is None
            else f"±{nf:.2f}" + ("", ", beyond")[abs(g["measured"] - g["target"]) > nf]
        )
        holds = "yes" if g["holds"] else "**no**"
        rows.append([g["goal"], f"{g['measured']:.2f}x", f"{g['target']}x", holds, aa, g["detail"]])
    L.append(_table(["goal", "measured", "target", "holds", "A/A", "detail"], rows))

    L.append("## Kernel time, forward+backward\n")
    L.append(
        "Median per call · ratio to the reference (**bold**) · fraction of the bandwidth bound.\n"
    )
    for name, by in res["kernel_time"].items():
        for d, rows in by.items():
            body = [
                [("**{}**" if k == ents[name]["reference"] else "{}").format(v["label"])]
                + [
                    f"{_time(c['median_s'])} · {c['ratio']:.2f}x · {c['of_bound']:.2f}"
                    for c in (r["results"][k] for r in rows)
                ]
                for k, v in ents[name]["variants"].items()
            ]
            bound = [
                f"{_time(r['bound']['median_s'])}, {r['bound']['gbytes_per_s']:.1f} GB/s"
                for r in rows
            ]
            body.append(["*bound: jitted (x\\*c, g\\*c)*", *bound])
            L += [
                f"### {name}, {d}\n",
                _table(["variant"] + [_exp2(r["elements"]) for r in rows], body),
            ]

    st, mt = res["mlp_step"], res["mlp_temp"]
    L.append(f"## MLP training step time (float32, {_shape(st)})\n")
    body = []
    for name, by in st["results"].items():
        lab = dict(mt["labels"][name], **{k: v["label"] for k, v in ents[name]["variants"].items()})
        body += [[name, lab[k], _time(x["median_s"]), f"{x['ratio']:.3f}"] for k, x in by.items()]
    L.append(_table(["entry", "variant", "step time", "ratio to the reference"], body))

    L.append(f"## MLP training step: compiled temp memory ({_shape(mt)})\n")
    L.append("MiB (ratio to the entry's reference, ratio to identity).\n")
    body = []
    for name, labels in mt["labels"].items():
        ref = ents[name]["reference"]
        for key, label in labels.items():
            cells = []
            for d, by in mt["bytes"].items():
                b = by[name]
                cells.append(
                    f"{b[key] / MIB:.1f} ({b[key] / b[ref]:.2f}, {b[key] / b['identity']:.2f})"
                )
            body.append([name, label, *cells])
    L.append(_table(["entry", "variant", *mt["bytes"]], body))

    acc = res["accuracy"]
    L.append("## Accuracy: max ulps against the registry's float64 references\n")
    L.append("Max (99.9th percentile); nonfinite: inf/NaN results where the reference is finite.\n")
    body = []
    for name in ents:
        for key, v in ents[name]["variants"].items():
            cells = []
            for d in acc:
                for part in ("forward", "gradient"):
                    a = acc[d][name].get(key, {}).get(part)
                    cells.append(_ulps(a) if a else "n/a")
            if any(key in acc[d][name] for d in acc):
                body.append([name, v["label"], *cells])
    L.append(
        _table(["entry", "variant"] + [f"{d} {p}" for d in acc for p in ("fwd", "grad")], body)
    )

    ce = res.get("code_error", {})
    if any(ce.values()):
        L.append("## Slope codes: decoded-slope error\n")
        L.append(
            "Decoded slope (cotangent 1) against the float64 derivative on N(0, 1) inputs: "
            "max abs error / the bound (max - min)/(2^bits - 1) over the finite slopes "
            "(max abs error, RMS error).\n"
        )
        body = []
        for name in ents:
            for key, v in ents[name]["variants"].items():
                if v["kind"] != "codes":
                    continue
                cells = []
                for d in ce:
                    c = ce[d].get(name, {}).get(key)
                    cells.append(
                        f"{c['of_bound']:.3f} ({c['max_abs']:.3g}, {c['rms']:.3g})" if c else "n/a"
                    )
                body.append([name, v["label"], *cells])
        L.append(_table(["entry", "variant", *ce], body))

    L.append("## HLO op counts of the optimised float32 forward+backward\n")
    body = []
    for name, by in res["hlo"].items():
        for k, h in by.items():
            tr = ", ".join(f"{op} {n}" for op, n in h["transcendental"].items()) or "-"
            body.append(
                [name, ents[name]["variants"][k]["label"], tr, h["elementwise_ops"], h["fusions"]]
            )
    L.append(_table(["entry", "variant", "transcendental ops", "elementwise ops", "fusions"], body))
    L += ["## Method\n", m["method"], f"\nAllocator: {m['allocator']}.\n"]
    return "\n".join(L)


def plots(res, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kt, ents = res["kernel_time"], res["entries"]
    dts = list(next(iter(kt.values())))
    fig, axes = plt.subplots(len(dts), len(kt), figsize=(5 * len(kt), 4 * len(dts)), squeeze=False)
    for j, (name, by) in enumerate(kt.items()):
        for i, d in enumerate(dts):
            ax, ns = axes[i][j], [r["elements"] for r in by[d]]
            for key, v in ents[name]["variants"].items():
                ts = [r["results"][key]["median_s"] for r in by[d]]
                ax.loglog(
                    ns,
                    ts,
                    "-" if v["kind"] in ("ours", "codes") else "--",
                    marker="o",
                    ms=3,
                    label=v["label"],
                )
            ax.loglog(ns, [r["bound"]["median_s"] for r in by[d]], ":k", label="bound")
            ax.set(title=f"{name} fwd+bwd, {d}", xlabel="elements", ylabel="s per call")
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scaling.png"), dpi=90)
    plt.close(fig)

    bd, labels = res["mlp_temp"]["by_depth"], res["mlp_temp"]["labels"]
    fig, axes = plt.subplots(1, len(bd["bytes"]), figsize=(5 * len(bd["bytes"]), 4), squeeze=False)
    for ax, (name, by) in zip(axes[0], bd["bytes"].items()):
        for i, (key, b) in enumerate(by.items()):  # coinciding lines stay visible: thinner on top
            ys = [b[str(k)] / MIB for k in bd["depths"]]
            ax.plot(
                bd["depths"],
                ys,
                marker="osD^"[i % 4],
                ms=8 - 1.5 * i,
                lw=3 - 0.6 * i,
                label=labels[name][key],
            )
        ax.set(title=f"{name}: MLP step, float32", xlabel="depth", ylabel="temp MiB")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "memory_depth.png"), dpi=90)
    plt.close(fig)
