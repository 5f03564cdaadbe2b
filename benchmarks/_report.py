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
        if ours == "ours_output":
            m = mem["float32"]
            detail = f"{m[ours] / MIB:.1f} MiB vs {m['identity'] / MIB:.1f} MiB"
            goal = f"{what} MLP temp memory <= {IDENTITY_TARGET}x identity (float32)"
            add(
                f"memory_{name}_vs_identity", goal, m[ours] / m["identity"], IDENTITY_TARGET, detail
            )
    return out


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
                    ns, ts, "-" if v["kind"] == "ours" else "--", marker="o", ms=3, label=v["label"]
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
