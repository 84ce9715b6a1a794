"""Turning results into the stdout table, docs/performance.md and the plots."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import common
from bench.systems import ALL

BASE = "leveret"
MB50_MIB = 50e6 / 2**20
"""The RSS target, 50 MB, in MiB."""

# (scenario, field, label, unit, better, format)
METRICS: list[tuple[str, str, str, str, str, str]] = [
    ("publish_1", "msgs_per_s", "publish, 1 caller", "msg/s", "higher", ",.0f"),
    ("publish_8", "msgs_per_s", "publish, 8 callers", "msg/s", "higher", ",.0f"),
    ("publish_batch", "msgs_per_s", "publish, batch API", "msg/s", "higher", ",.0f"),
    (
        "publish_concurrent",
        "msgs_per_s",
        "publish, 1000 concurrent asyncio callers",
        "msg/s",
        "higher",
        ",.0f",
    ),
    ("drain", "msgs_per_s", "drain, 1 worker process", "msg/s", "higher", ",.0f"),
    ("latency", "p50_ms", "latency p50 @ rate", "ms", "lower", ".2f"),
    ("latency", "p99_ms", "latency p99 @ rate", "ms", "lower", ".1f"),
    ("retry", "seconds", "retry path, fail once (wall)", "s", "lower", ".2f"),
    ("drain", "rss_mib", "consumer peak RSS (drain)", "MiB", "lower", ".1f"),
]


def brief(scenario: str, res: dict[str, Any]) -> str:
    """One progress line for a measurement."""
    status = res.get("status")
    if status == "n/a":
        return "n/a"
    if status == "error":
        return "ERROR " + res.get("error", "").splitlines()[0][:150]
    parts = []
    for key, fmt in (
        ("msgs_per_s", ",.0f"),
        ("seconds", ".2f"),
        ("p50_ms", ".2f"),
        ("p99_ms", ".1f"),
        ("rss_mib", ".1f"),
    ):
        if key in res:
            parts.append(f"{key}={res[key]:{fmt}}")
    parts.append(f"lost={res.get('lost')} dup={res.get('duplicates')}")
    if res.get("left"):
        parts.append(f"left={res['left']}")
    if res.get("foreign_cpu", 0) > 0.1:
        parts.append(f"others={res['foreign_cpu']:.2f}cores")
    if res.get("attempt", 1) > 1:
        parts.append(f"(attempt {res['attempt']})")
    return " ".join(parts)


def medians(data: dict[str, Any]) -> dict[tuple[str, str, str], float | str]:
    """(scenario, field, system) -> median over the rounds, or "n/a" / "error"."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    states: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for run in data["runs"]:
        res = run["result"]
        for scenario, field, *_ in METRICS:
            if run["scenario"] != scenario:
                continue
            key = (scenario, field, run["system"])
            states[key].add(res.get("status", "error"))
            if res.get("status") == "ok" and field in res:
                values[key].append(float(res[field]))
    out: dict[tuple[str, str, str], float | str] = {}
    for key, st in states.items():
        if values.get(key):
            out[key] = common.median(values[key])
        else:
            out[key] = "n/a" if st == {"n/a"} else "error"
    return out


def systems_in(data: dict[str, Any]) -> list[str]:
    seen = {r["system"] for r in data["runs"]}
    return [s for s in ALL if s in seen]


def _cell(value: float | str | None, base: float | str | None, fmt: str, system: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    text = format(value, fmt)
    if system != BASE and isinstance(base, float) and base:
        text += f" ({value / base:.2f}x)"
    return text


def accounting(data: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per system: messages expected, lost, duplicated, left in queues, measurements failed."""
    acc: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for run in [*data["runs"], *data.get("scale", [])]:
        res, a = run["result"], acc[run["system"]]
        if res.get("status") == "error":
            a["errors"] += 1
        for k in ("expected", "lost", "duplicates", "left"):
            a[k] += int(res.get(k) or 0)
        a["reruns"] += int(res.get("attempt", 1)) - 1
    return acc


def rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    systems = systems_in(data)
    med = medians(data)
    rate = data["environment"].get("rate", 500)
    header = ["metric", "unit", *systems]
    out = []
    for scenario, field, label, unit, better, fmt in METRICS:
        if not any((scenario, field, s) in med for s in systems):
            continue
        label = label.replace("@ rate", f"@ {rate:g} msg/s")
        arrow = "↑" if better == "higher" else "↓"
        base = med.get((scenario, field, BASE))
        cells = [_cell(med.get((scenario, field, s)), base, fmt, s) for s in systems]
        out.append([label, f"{unit} {arrow}", *cells])
    acc = accounting(data)
    out.append(
        [
            "lost / duplicated / left",
            "msgs",
            *(f"{acc[s]['lost']} / {acc[s]['duplicates']} / {acc[s]['left']}" for s in systems),
        ]
    )
    return header, out


def table(data: dict[str, Any]) -> str:
    header, body = rows(data)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            h.ljust(w) if i < 2 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    note = (
        f"medians of {rounds(data['environment'])}; (x) = system / leveret; "
        "↑ higher is better, ↓ lower is better"
    )
    return "\n".join(["", note, *lines])


def rounds(env: dict[str, Any]) -> str:
    """How many interleaved rounds a run had: "3 interleaved rounds (5 of latency)"."""
    n = env["rounds"]
    text = f"{n} interleaved round{'s' if n != 1 else ''}"
    latency = env.get("latency_rounds", n)
    return text + (f" ({latency} of latency)" if latency != n else "")


def md_table(header: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


def problems(data: dict[str, Any]) -> list[str]:
    """Measurements that failed after their reruns, or that lost or left messages."""
    out = []
    for run in [*data["runs"], *data.get("scale", [])]:
        res = run["result"]
        what = f"{run['system']} {'scale ' + run['curve'] if 'curve' in run else run['scenario']}"
        if res.get("status") == "error":
            out.append(f"{what}: {res.get('error', '').splitlines()[0][:300]}")
        elif res.get("lost") or res.get("left"):
            out.append(f"{what}: lost {res.get('lost')}, left in queues {res.get('left')}")
    prof = data.get("profile") or {}
    if prof.get("error"):
        out.append(f"profile: {prof['error']}")
    return out


# --- targets ----------------------------------------------------------------------------------


def targets(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for leveret's performance targets."""
    med = medians(data)

    def get(scenario: str, field: str, system: str) -> float | None:
        v = med.get((scenario, field, system))
        return v if isinstance(v, float) else None

    out = []

    def ratio_row(
        label: str, a: float | None, b: float | None, want: float, higher: bool, unit: str
    ) -> None:
        if a is None or b is None:
            out.append((label, "not measured", "-"))
            return
        r = a / b
        ok = r >= want if higher else r <= want
        out.append(
            (label, f"{a:,.1f} vs {b:,.1f} {unit}: {r:.3f}x", "met" if ok else "**not met**")
        )

    lev_drain = get("drain", "msgs_per_s", BASE)
    drain = "worker drain, validation and logging on"
    ratio_row(
        f"{drain}, ≥ 1.2x Dramatiq",
        lev_drain,
        get("drain", "msgs_per_s", "dramatiq"),
        1.2,
        True,
        "msg/s",
    )
    ratio_row(
        f"{drain}, ≥ 1.0x raw pika",
        lev_drain,
        get("drain", "msgs_per_s", "pika"),
        1.0,
        True,
        "msg/s",
    )
    ratio_row(
        f"{drain}, ≥ 0.6x the Go client",
        lev_drain,
        get("drain", "msgs_per_s", "go"),
        0.6,
        True,
        "msg/s",
    )
    go_batch = get("publish_batch", "msgs_per_s", "go")
    ratio_row(
        "publish with confirms, batch API (`Publisher.publish_many`), ≥ 0.5x the Go client's "
        "pipelined confirms",
        get("publish_batch", "msgs_per_s", BASE),
        go_batch,
        0.5,
        True,
        "msg/s",
    )
    ratio_row(
        "publish with confirms, concurrent path (1000 concurrent `AsyncPublisher.publish`), "
        "≥ 0.5x the Go client's pipelined confirms",
        get("publish_concurrent", "msgs_per_s", BASE),
        go_batch,
        0.5,
        True,
        "msg/s",
    )
    ratio_row(
        "single synchronous `publish` ≥ 1.0x raw pika's (1 caller)",
        get("publish_1", "msgs_per_s", BASE),
        get("publish_1", "msgs_per_s", "pika"),
        1.0,
        True,
        "msg/s",
    )
    ratio_row(
        "retry path (each message fails once, first tier 10 ms) ≤ 0.5x Dramatiq's wall time",
        get("retry", "seconds", BASE),
        get("retry", "seconds", "dramatiq"),
        0.5,
        False,
        "s",
    )
    ratio_row(
        "p99 latency at the offered rate ≤ raw pika's",
        get("latency", "p99_ms", BASE),
        get("latency", "p99_ms", "pika"),
        1.0,
        False,
        "ms",
    )
    rss = get("drain", "rss_mib", BASE)
    if rss is None:
        out.append(("worker RSS < 50 MB", "not measured", "-"))
    else:
        out.append(
            (
                "worker RSS < 50 MB",
                f"{rss * 2**20 / 1e6:.1f} MB ({rss:.1f} MiB) peak",
                "met" if rss < MB50_MIB else "**not met**",
            )
        )
    return out


# --- plots ------------------------------------------------------------------------------------


def plots(data: dict[str, Any], directory: Path) -> list[Path]:
    import logging

    import matplotlib

    # leveret.logs.configure (run by the profile, in this process) routes stdlib logging at INFO.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    med = medians(data)
    systems = systems_in(data)
    panels = [
        m for m in METRICS if any(isinstance(med.get((m[0], m[1], s)), float) for s in systems)
    ]
    if panels:
        cols = 4
        nrows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
        for ax, (scenario, field, label, unit, better, _fmt) in zip(
            axes.flat, panels, strict=False
        ):
            vals = [med.get((scenario, field, s)) for s in systems]
            xs = [s for s, v in zip(systems, vals, strict=True) if isinstance(v, float)]
            ys = [v for v in vals if isinstance(v, float)]
            colors = ["#d62728" if s == BASE else "#7f7f7f" for s in xs]
            ax.bar(xs, ys, color=colors)
            label = label.replace("@ rate", f"@ {data['environment'].get('rate', 500):g} msg/s")
            ax.set_title(
                f"{label} ({'higher' if better == 'higher' else 'lower'} is better)", fontsize=9
            )
            ax.set_ylabel(unit)
            ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle("leveret and its peers, medians (red: leveret)")
        fig.tight_layout()
        path = directory / "bench-summary.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path)
    curves = data.get("scale") or []
    if curves:
        from bench.scenarios.scale import CURVES, kept_up

        names = [c for c in CURVES if any(p["curve"] == c for p in curves)]
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
        for ax in axes.flat[len(names) :]:
            ax.set_visible(False)
        for ax, name in zip(axes.flat, names, strict=False):
            pts = [p for p in curves if p["curve"] == name and p["result"].get("status") == "ok"]
            latency = CURVES[name].get("scenario") == "latency"
            for system in sorted({p["system"] for p in pts}, key=ALL.index):
                mine = [p for p in pts if p["system"] == system]
                xs = [str(p["x"]) for p in mine]
                color = "#d62728" if system == BASE else None
                if not latency:
                    ys = [p["result"]["msgs_per_s"] for p in mine]
                    ax.plot(xs, ys, marker="o", label=system, color=color)
                    continue
                (line,) = ax.plot(
                    xs, [p["result"]["p99_ms"] for p in mine], marker="o", label=system, color=color
                )
                # Hollow: a point that did not keep up (publishers, consumer or a queue).
                behind = [(x, p) for x, p in zip(xs, mine, strict=True) if not kept_up(p["result"])]
                ax.plot(
                    [x for x, _ in behind],
                    [p["result"]["p99_ms"] for _, p in behind],
                    linestyle="none",
                    marker="o",
                    markersize=10,
                    markerfacecolor="white",
                    color=line.get_color(),
                )
            if latency:
                ax.set_title("p99 latency vs offered load (hollow: fell behind)", fontsize=10)
                ax.set_ylabel("ms")
                ax.set_yscale("log")
            else:
                ax.set_title(f"drain throughput vs {CURVES[name]['label']}", fontsize=10)
                ax.set_ylabel("msg/s")
                ax.set_ylim(bottom=0)
            ax.set_xlabel(CURVES[name]["label"])
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = directory / "bench-scale.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path)
    return made


# --- docs/performance.md ----------------------------------------------------------------------


def scale_table(data: dict[str, Any]) -> str:
    from bench.scenarios.scale import CURVES, kept_up

    curves = data.get("scale") or []
    out = []
    for name, spec in CURVES.items():
        pts = [p for p in curves if p["curve"] == name]
        if not pts:
            continue
        systems = [s for s in ALL if any(p["system"] == s for p in pts)]
        xs = list(dict.fromkeys(str(p["x"]) for p in pts))
        latency = spec.get("scenario") == "latency"
        unit = "p50 / p99 ms" if latency else "msg/s (peak RSS MiB)"
        header = [spec["label"], *(f"{s} {unit}" for s in systems)]
        body = []
        for x in xs:
            row = [x]
            for s in systems:
                res = next((p["result"] for p in pts if str(p["x"]) == x and p["system"] == s), {})
                if res.get("status") != "ok":
                    row.append(res.get("status", "-"))
                elif not latency:
                    row.append(f"{res['msgs_per_s']:,.0f} ({res['rss_mib']:.0f})")
                elif kept_up(res):
                    row.append(f"{res['p50_ms']:.1f} / {res['p99_ms']:.1f}")
                else:
                    row.append(
                        f"{res['p50_ms']:,.1f} / {res['p99_ms']:,.1f}, fell behind: published "
                        f"{res['achieved_rate']:,.0f}, consumed {res['consumer_rate']:,.0f} msg/s"
                    )
            body.append(row)
        n = ", ".join(f"{n:,}" for n in sorted({p["n"] for p in pts}))
        out.append(f"**{spec['label']}** ({n} messages per point)\n\n" + md_table(header, body))
    return "\n\n".join(out)


IDLE_BOUND = 0.1
"""Below this share of idle samples, the profiled worker counts as CPU-bound."""


def profile_section(prof: dict[str, Any] | None) -> str:
    if not prof:
        return "_Not run (`--no-profile`)._"
    if prof.get("error"):
        return f"_The profile failed: {prof['error']}_"
    idle = prof["idle_share"]
    verdict = (
        "between deliveries it waits for the next, as it should at that pace"
        if prof.get("mode") == "paced"
        else "the worker is CPU-bound, not waiting for the broker"
        if idle < IDLE_BOUND
        else "the worker is busy most of the time, and waits for the broker the rest of it"
        if idle < 0.5
        else "the broker, not the worker, sets the pace"
    )
    if prof.get("mode") == "paced":
        took = f"took {prof['messages']:,} messages published at {prof.get('rate', 500):g} msg/s"
    else:
        took = f"drained {prof['messages']:,} messages"
    lines = [
        f"py-spy sampled the worker at {prof['rate_hz']} Hz while it {took} "
        f"({prof['msgs_per_s_under_profiler']:,.0f} msg/s under the profiler). Its "
        f"event-loop thread was idle (waiting on the socket) in {idle:.0%} of the "
        f"samples: {verdict}. Busy loop time per "
        f"message: about {prof['busy_us_per_message']:.0f} µs (with the profiler's own overhead).",
        "",
        "Busy samples by the package of the innermost frame (self time):",
        "",
        md_table(["package", "share"], [[k, f"{v:.1%}"] for k, v in prof["packages"].items()]),
        "",
        "leveret's functions, inclusive (share of busy samples with the function on the stack):",
        "",
        md_table(
            ["function", "share"],
            [[f"`{k}`", f"{v:.1%}"] for k, v in prof["leveret_inclusive"][:12]],
        ),
        "",
        "Library entry points, inclusive:",
        "",
        md_table(
            ["function", "share"],
            [[f"`{k}`", f"{v:.1%}"] for k, v in prof["library_inclusive"][:12]],
        ),
        "",
        "Hottest single lines (self time):",
        "",
        md_table(["frame", "share"], [[f"`{k}`", f"{v:.1%}"] for k, v in prof["top_self"][:12]]),
    ]
    return "\n".join(lines)


def settings_table(data: dict[str, Any]) -> str:
    notes: dict[str, dict[str, str]] = defaultdict(dict)
    for run in data["runs"]:
        res = run["result"]
        if res.get("consumer"):
            notes[run["system"]]["consumer"] = res["consumer"]
        if res.get("api") and run["scenario"] == "publish_batch":
            notes[run["system"]]["batch"] = res["api"]
        if res.get("api") and run["scenario"] == "publish_concurrent":
            notes[run["system"]]["concurrent"] = res["api"]
        if res.get("api") and run["scenario"] == "retry":
            notes[run["system"]]["retry"] = res["api"]
        if res.get("status") == "n/a":
            notes[run["system"]].setdefault(
                {
                    "publish_batch": "batch",
                    "publish_concurrent": "concurrent",
                    "retry": "retry",
                }.get(run["scenario"], run["scenario"]),
                res.get("why") or "n/a (no such API)",
            )
    body = [
        [s, *(notes[s].get(key, "-") for key in ("consumer", "batch", "concurrent", "retry"))]
        for s in systems_in(data)
    ]
    return md_table(
        [
            "system",
            "consumer (drain, latency, retry)",
            "batch publish",
            "concurrent publish",
            "retry",
        ],
        body,
    )


def markdown(data: dict[str, Any], pngs: list[Path]) -> str:
    from bench import docs

    return docs.render(data, pngs)
