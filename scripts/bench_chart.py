#!/usr/bin/env python3
"""The `make bench` table as a chart: evserver against the C reference, per scenario.

    scripts/bench_chart.py RESULT.json [RESULT.json ...] --out CHART.png

Each RESULT.json is what scripts/bench_run.py wrote beside its markdown report (bench-results/latest.json for one
thread, threads-2.json for --threads 2); the report's second line (date, commit) titles the chart. Three panels:
requests per second of both servers, then evserver's ratio to the reference in req/s and in CPU per request (the
reference's CPU µs/req over evserver's, so above 1 is better in both), with the goals drawn at 1.0 and 0.9. The
`hot@N` scenarios are left out of the ratios: the reference answers most of those with errors (see BENCHMARKS.md).
"""
import argparse
import json
import re
import sys
from pathlib import Path

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("matplotlib is missing: apt-get install python3-matplotlib (scripts/bench.sh installs it)")

SCENARIOS = ["hello", "read", "write", "create"]


def load(path):
    rows = json.loads(Path(path).read_text())["rows"]
    report = Path(path).with_suffix(".md")
    lines = report.read_text().splitlines() if report.exists() else []
    title = lines[0].removeprefix("# EvServer benchmark: ") if lines else Path(path).stem
    when = re.sub(r", AMD.*|, Intel.*", "", lines[2]).replace("`", "") if len(lines) > 2 else ""
    by = {(r["scenario"], r["server"]): r for r in rows}
    return title, when, by


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    runs = [load(p) for p in opts.results]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    width = 0.8 / (2 * len(runs))
    for panel, (label, ylabel) in enumerate([("req/s", "requests per second"),
                                             ("req/s ratio", "evserver / reference, req/s"),
                                             ("CPU ratio", "reference / evserver, CPU µs per request")]):
        ax = axes[panel]
        for index, (title, _, by) in enumerate(runs):
            present = [s for s in SCENARIOS if (s, "evserver") in by and (s, "reference") in by]
            x = [SCENARIOS.index(s) for s in present]
            if panel == 0:
                for k, server in enumerate(["evserver", "reference"]):
                    offset = (2 * index + k - len(runs) + 0.5) * width
                    values = [by[(s, server)]["rps"] for s in present]
                    bars = ax.bar([i + offset for i in x], values, width, label=f"{server}, {title}",
                                  color=["tab:blue", "tab:gray"][k], alpha=1.0 if index == 0 else 0.55)
                    ax.bar_label(bars, labels=[f"{v / 1000:.0f}k" for v in values], fontsize=7)
            else:
                offset = (index - (len(runs) - 1) / 2) * (0.8 / len(runs))
                if panel == 1:
                    values = [by[(s, "evserver")]["rps"] / by[(s, "reference")]["rps"] for s in present]
                else:
                    values = [by[(s, "reference")]["cpu_us_per_req"] / by[(s, "evserver")]["cpu_us_per_req"]
                              for s in present]
                bars = ax.bar([i + offset for i in x], values, 0.8 / len(runs), label=title,
                              color="tab:blue", alpha=1.0 if index == 0 else 0.55)
                ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
        if panel > 0:
            ax.axhline(1.0, color="tab:green", linewidth=1, linestyle="--", label="goal for hello (1.0)")
            ax.axhline(0.9, color="tab:orange", linewidth=1, linestyle=":", label="goal for the others (0.9)")
            ax.set_ylim(0, 1.25)
        ax.set_xticks(range(len(SCENARIOS)), SCENARIOS)
        ax.set_title(label)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, loc="lower left" if panel > 0 else "upper right")
    whens = sorted({when for _, when, _ in runs if when})
    figure.suptitle("evserver against the hand-written C reference (make bench)" + (": " + "; ".join(whens) if whens else ""),
                    fontsize=11)
    figure.tight_layout()
    figure.savefig(opts.out, dpi=100)
    print(f"chart written to {opts.out}")


if __name__ == "__main__":
    main()
