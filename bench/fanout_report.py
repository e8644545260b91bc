"""bench/fanout.py's report: the console summary, PASS/MISS per target, Markdown, plots.

    .venv/bin/python bench/fanout_report.py RESULTS.json [MORE.json ...] [--plots DIR]

prints the Markdown of the results (files given later add to or replace the scenarios of
earlier ones) and redraws the plots from them.
"""

import argparse
import json
import sys
from pathlib import Path

# Issue 10's targets.
TARGET_CLIENTS = 1000
TARGET_P99_MS = 250
TARGET_IDLE_KB = 30
TARGET_STALL_MIB = 2
TARGET_STALL_P99_RATIO = 1.20
TARGET_REPLAY_LPS = 200_000


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def plot(results: dict, img_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib missing: no plots; `pip install '.[bench]'`)")
        return []
    img_dir.mkdir(parents=True, exist_ok=True)
    series = {}
    for row in results.get("fanout", []) + results.get("peers", []):
        if row.get("web_processes", 1) != 1 or not row.get("connected"):
            continue
        series.setdefault(row["target"], []).append(row)
    colours = {"tailgate": "tab:blue", "eventstream": "tab:orange", "naive": "tab:green"}
    names = {
        "tailgate": "Tailgate",
        "eventstream": "django-eventstream",
        "naive": "naive Channels consumer",
    }
    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for target, rows in series.items():
        rows = sorted(rows, key=lambda r: r["clients"])
        xs = [r["clients"] for r in rows]
        ax.plot(xs, [r["p50_ms"] for r in rows], "o--", color=colours.get(target), alpha=0.6,
                label=f"{names.get(target, target)} p50")  # fmt: skip
        ax.plot(xs, [r["p99_ms"] for r in rows], "o-", color=colours.get(target),
                label=f"{names.get(target, target)} p99")  # fmt: skip
        for r in rows:
            if r["p99_ms"] != r["p99_ms"]:
                continue
            if r["connected"] < r["clients"] or r.get("lost_lines"):
                ax.annotate("loses lines" if r.get("lost_lines") else "errors",
                            (r["clients"], r["p99_ms"]), fontsize=8, color=colours.get(target))  # fmt: skip
    # Runs where a peer delivered nothing (or not to everyone): a cross at the top, labelled.
    top = max(
        [r["p99_ms"] for rows in series.values() for r in rows if r["p99_ms"] == r["p99_ms"]]
        or [1000]
    )
    for target, rows in series.items():
        for r in rows:
            if r["p99_ms"] != r["p99_ms"] or r["ended_early"] > 0.5 * r["clients"]:
                ax.scatter([r["clients"]], [top * 1.6], marker="X", s=80, color=colours.get(target))
                ax.annotate(f"{names.get(target, target)} fails", (r["clients"], top * 1.6),
                            textcoords="offset points", xytext=(6, -3), fontsize=8,
                            color=colours.get(target))  # fmt: skip
    ax.axhline(TARGET_P99_MS, color="grey", linestyle=":", label=f"target p99 {TARGET_P99_MS} ms")
    ax.set_yscale("log")
    paths.append(
        _save_plot(
            fig,
            ax,
            "SSE clients on one web process (100 lines/s each)",
            "latency, print → received (ms)",
            "Fan-out latency vs clients",
            img_dir / "fanout_latency.png",
        )
    )

    fig, ax = plt.subplots(figsize=(8, 5))
    for target, rows in series.items():
        rows = sorted(rows, key=lambda r: r["clients"])
        ax.plot([r["clients"] for r in rows], [r["rss_peak_mb"] for r in rows], "o-",
                color=colours.get(target), label=f"{names.get(target, target)}, following")  # fmt: skip
    for row in results.get("idle", []):
        if row.get("open"):
            ax.plot([row["open"]], [row["rss_mb"]], "s" if row["kind"] == "sse" else "^",
                    color="tab:purple",
                    label=f"Tailgate, idle {row['kind'].upper()} ({row['kb_per_conn']:.1f} KB each)")  # fmt: skip
    ax.set_ylim(bottom=0)
    paths.append(
        _save_plot(
            fig,
            ax,
            "connections on one web process",
            "web process peak RSS (MB)",
            "Web process memory vs clients",
            img_dir / "fanout_memory.png",
        )
    )
    return paths


def _save_plot(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Both plots' common finish: log x axis, labels, grid, legend, written as PNG."""
    import matplotlib.pyplot as plt

    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


NAMES = {"tailgate": "Tailgate", "eventstream": "django-eventstream", "naive": "naive Channels"}


def fmt(value, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def fanout_table(results: dict) -> list[str]:
    rows = results.get("fanout", []) + results.get("peers", [])
    if not rows:
        return []
    out = [
        "| target | clients | web | connected | HTTP errors | ended early | lost lines (clients) "
        "| dup | out of order | p50 ms | p99 ms | max ms | web RSS MB | PG conns | Redis conns "
        "| web CPU % | web waiting for a CPU % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lost = "-" if r.get("lost_lines") is None else f"{r['lost_lines']:,.0f}"
        out.append(
            f"| {NAMES.get(r['target'], r['target'])} | {r['clients']:,.0f} | "
            f"{r['web_processes']:.0f} | {r['connected']:,.0f} | {r['http_errors']:.0f} | "
            f"{r['ended_early']:.0f} | {lost} ({r['clients_losing']:.0f}) | "
            f"{r['duplicates']:.0f} | {r['out_of_order']:.0f} | {fmt(r['p50_ms'])} | "
            f"{fmt(r['p99_ms'])} | {fmt(r['max_ms'], '.0f')} | {fmt(r['rss_peak_mb'], '.0f')} | "
            f"{fmt(r['pg_peak'], '.0f')} | {fmt(r['redis_peak'], '.0f')} | "
            f"{fmt(r.get('web_cpu_pct'), '.0f')} | {fmt(r.get('web_cpu_wait_pct'), '.0f')} |"
        )
    for r in results.get("peers_not_run", []):
        out.append(
            f"| {NAMES.get(r['target'], r['target'])} | {r['clients']:,.0f} | 1 | not run: "
            f"failed at N = {r['failed_at']:,} | | | | | | | | | | | | | |"
        )
    return out


def verdicts(results: dict) -> list[tuple[str, str]]:
    """(PASS | MISS | n/a, what was measured against which target), for every target."""
    out: list[tuple[str, str]] = []
    fan = results.get("fanout", [])
    if "fanout" in results:
        one = [r for r in fan if r["web_processes"] == 1 and r["clients"] == TARGET_CLIENTS]
        if one:
            r = one[0]
            errors = r["http_errors"] + r["ended_early"] + (r["clients"] - r["connected"])
            ok = not r["lost_lines"] and not errors and r["p99_ms"] <= TARGET_P99_MS
            out.append((verdict(ok), f"1,000 clients x 100 lines/s on one web process: lost "
                        f"{r['lost_lines']:,.0f}, errors {errors:.0f}, p99 {r['p99_ms']:,.1f} ms "
                        f"(target 0, 0, ≤ {TARGET_P99_MS} ms)"))  # fmt: skip
        else:
            out.append(("n/a", "1,000 clients x 100 lines/s: not run"))
    peers = [r for r in results.get("peers", []) if r["target"] == "eventstream"]
    if peers:
        ours = {r["clients"]: r for r in fan if r["web_processes"] == 1}
        # Where it runs: every client connected, none cut off, lines delivered.
        runs = [
            r
            for r in peers
            if r["clients"] in ours
            and r["connected"] == r["clients"]
            and not r["ended_early"]
            and r["p99_ms"] == r["p99_ms"]
        ]
        failed_runs = [r for r in peers if r not in runs]
        behind = [
            r["clients"]
            for r in runs
            if ours[r["clients"]]["p99_ms"] > r["p99_ms"]
            or (ours[r["clients"]]["lost_lines"] or 0) > (r["lost_lines"] or 0)
        ]
        detail = ", ".join(
            f"N = {r['clients']:,.0f}: p99 {ours[r['clients']]['p99_ms']:,.0f} vs {r['p99_ms']:,.0f} ms"
            for r in runs
        )
        if failed_runs:
            first = min(failed_runs, key=lambda r: r["clients"])
            detail += (
                f"; django-eventstream fails at N = {first['clients']:,.0f} "
                f"({first['connected']:,.0f} connected, {first['ended_early']:,.0f} cut off or "
                f"timed out, {first['lost_lines']:,.0f} lines lost)"
            )
        if runs:
            out.append((verdict(not behind), f"ahead of django-eventstream where it runs ({detail})"
                        + (f"; behind at N = {behind}" if behind else "")))  # fmt: skip
        else:
            out.append(("n/a", "ahead of django-eventstream: no Tailgate run at the same N"))
    for r in results.get("idle", []):
        kind = r["kind"].upper()
        out.append((verdict(r["kb_per_conn"] <= TARGET_IDLE_KB),
                    f"idle {kind}: {r['kb_per_conn']:.1f} KB per connection with {r['open']:,.0f} "
                    f"of {r['requested']:,.0f} open (target ≤ {TARGET_IDLE_KB} KB)"))  # fmt: skip
        out.append((verdict(r["late"] == 0 and r["open"] > 0),
                    f"idle {kind} keep-alives: {r['late']:,.0f} connections silent > "
                    f"{2 * r['keepalive_s']:g} s, longest {fmt(r['max_silence_s'])} s"))  # fmt: skip
    for kind, stall in (results.get("stall") or {}).items():
        out.append((verdict(stall["mib_per_stalled"] <= TARGET_STALL_MIB),
                    f"stalled {kind.upper()} clients: {stall['mib_per_stalled']:.2f} MiB each "
                    f"(target ≤ {TARGET_STALL_MIB} MiB)"))  # fmt: skip
        ratio = stall.get("p99_ratio") or float("inf")
        out.append((verdict(ratio <= TARGET_STALL_P99_RATIO),
                    f"healthy p99 with {stall['stalled']:.0f} stalled {kind.upper()} clients: "
                    f"{stall['healthy_with_p99_ms']:.1f} vs {stall['healthy_alone_p99_ms']:.1f} ms "
                    f"alone (x{ratio:.2f}, target ≤ x{TARGET_STALL_P99_RATIO})"))  # fmt: skip
    replay = results.get("replay")
    if replay:
        for kind in ("sse", "text"):
            lps = replay[f"{kind}_lps"]
            out.append((verdict(lps >= TARGET_REPLAY_LPS),
                        f"replay as {kind.upper()}: {lps:,.0f} lines/s (target ≥ "
                        f"{TARGET_REPLAY_LPS:,}; bare SELECT {replay['select_lps']:,.0f} rows/s)"))  # fmt: skip
    return out


def report(results: dict, tg_commit: str) -> None:
    print(f"\n== Summary (main {tg_commit}, {results['date']}, {results.get('load_end')})")
    for line in fanout_table(results):
        print(line)
    print("\nTargets (issue 10):")
    for mark, text in verdicts(results):
        print(f"  {mark:<5} {text}")
    sys.stdout.flush()


def run_line(results: dict) -> str:
    scenarios = [k for k in ("fanout", "peers", "stall", "replay", "idle") if k in results]
    return (
        f"{', '.join(scenarios)}: run of {results['date']} on main `{results.get('commit')}`, "
        f"{results.get('load_start')} at the start ({results.get('load_end')} at the end); "
        + (f"medians of {n} runs" if (n := results["args"]["repeat"]) > 1 else "one run")
        + f", {results['args']['rate']:g} lines/s for {results['args']['seconds']:g} s."
    )


def markdown(results: dict, runs: list[str] | None = None) -> str:
    """The results as the Markdown of docs/benchmarks-fanout.md."""
    lines = [f"- {line}" for line in (runs or [run_line(results)])] + [""]
    marks = verdicts(results)
    if marks:
        lines += ["| | target (issue 10) |", "|---|---|"]
        lines += [f"| **{mark}** | {text} |" for mark, text in marks]
        lines.append("")
    table = fanout_table(results)
    if table:
        lines += ["Fan-out, one execution, N SSE clients:", "", *table, ""]
    if results.get("idle"):
        lines += [
            "| idle | open / asked | connect time | RSS before → with them | per connection "
            "| longest silence (keep-alive 5 s) | late | PG | Redis |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for r in results["idle"]:
            lines.append(
                f"| {r['kind'].upper()} | {r['open']:,.0f} / {r['requested']:,.0f} | "
                f"{r['connect_seconds']:.0f} s | {r['rss_base_mb']:.0f} → {r['rss_mb']:.0f} MB | "
                f"{r['kb_per_conn']:.1f} KB | {fmt(r['max_silence_s'])} s | {r['late']:,.0f} | "
                f"{fmt(r.get('pg_peak'), '.0f')} | {fmt(r.get('redis_peak'), '.0f')} |"
            )
        lines.append("")
    if results.get("stall"):
        lines += [
            "| stalled clients | RSS before → peak → after they close | per stalled client "
            "| healthy p99 alone → with them | healthy lines lost |",
            "|---|--:|--:|--:|--:|",
        ]
        for kind, r in results["stall"].items():
            lines.append(
                f"| {r['stalled']:.0f} x {kind.upper()} | {r['rss_base_mb']:.0f} → "
                f"{r['rss_peak_mb']:.0f} → {r['rss_after_close_mb']:.0f} MB | "
                f"{r['mib_per_stalled']:.2f} MiB | {r['healthy_alone_p99_ms']:.1f} → "
                f"{r['healthy_with_p99_ms']:.1f} ms | {fmt(r['healthy_with_lost'], ',.0f')} |"
            )
        lines.append("")
    replay = results.get("replay")
    if replay:

        def cells(kind: str) -> str:
            ratio = replay.get(f"{kind}_ratio")
            streaming = replay.get(f"{kind}_streaming_lps")
            return f"x{fmt(ratio, '.2f')} | {fmt(streaming, ',.0f')}"

        lines += [
            "| replay of the finished log | lines | lines/s | vs the SELECT, same run | lines/s from the headers |",
            "|---|--:|--:|--:|--:|",
            f"| SSE (`replay_limit` = its maximum) | {replay['sse_lines']:,} | {replay['sse_lps']:,.0f} | {cells('sse')} |",
            f"| plain text `/output` | {replay['lines']:,} | {replay['text_lps']:,.0f} | {cells('text')} |",
            f"| bare `SELECT` (server-side cursor) | {replay['lines']:,} | {replay['select_lps']:,.0f} | x1 | |",
            "",
        ]
    profile = results.get("profile")
    if profile and profile.get("top"):
        run = profile["run"]
        lines += [
            f"py-spy, web process, 10 s while the lines flow at N = {run['clients']:,.0f} (p99 "
            f"{run['p99_ms']:,.0f} ms). {profile.get('waiting_pct') or 0:.0f} % of the samples "
            "wait (idle pool threads, the selector, psycopg); of the others, the top 15 "
            "functions by own time:",
            "",
            "| own % | function |",
            "|--:|---|",
        ]
        lines += [f"| {pct:.1f} | `{name}` |" for name, _count, pct in profile["top"]]
        lines.append("")
        if profile.get("project"):
            lines += [
                "The same (computing) samples by the Tailgate function they run under (deepest "
                "frame in streaming/, rbac/, executions/):",
                "",
                "| % | under |",
                "|--:|---|",
            ]
            lines += [f"| {pct:.1f} | `{name}` |" for name, _count, pct in profile["project"]]
            lines.append("")
    if results.get("failed"):
        lines += [f"Failed scenarios: {results['failed']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--plots", default="")
    args = parser.parse_args()
    merged: dict = {}
    runs = []
    for path in args.results:
        results = json.loads(Path(path).read_text())
        runs.append(run_line(results))
        merged.update(results)
    print(markdown(merged, runs))
    if args.plots:
        for path in plot(merged, Path(args.plots)):
            print(f"plot: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
