"""The comparison's outputs: results.json / results.csv, report.md with tables and PNG plots, and W&B.

Reads only what the stages wrote (eval.json, eval_samples.jsonl, manifest.json, metrics.jsonl),
so a report can be rebuilt from a finished comparison directory.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.data.pipeline import read_json, read_jsonl, write_json
from workbench.evaluate import COST_METRICS, POLICY_METHODS, QUALITY_METRICS
from workbench.metrics import mean_std

if TYPE_CHECKING:
    from workbench.compare import Comparison, Outcome, StageRun

# Which way is better, per metric (None: no "best", e.g. response length).
HIGHER_IS_BETTER: dict[str, bool | None] = {
    "reward_mean": True,
    "gold_reward_mean": True,
    "win_rate_vs_baseline": True,
    "kl_to_reference": False,
    "preference_accuracy": True,
    "response_length_mean": None,
    "distinct_2": True,
    "wall_seconds": False,
    "train_tokens": None,
    "generated_tokens": None,
    "peak_memory_mb": False,
}
EXTRA_METRICS = ("kl_to_reference_k1", "win_rate_stderr", "finished_share")


# ----------------------------------------------------------------------------------------------
# Aggregation over seeds


def aggregate(comparison: Comparison, runs: dict[int, dict[str, StageRun]]) -> list[dict[str, Any]]:
    """One object per policy stage: every metric's mean over seeds (and `<metric>_std` with several seeds), plus per-seed values."""
    results = []
    for name, stage in comparison.stages.items():
        per_seed_runs = [runs[seed][name] for seed in comparison.seeds if name in runs[seed]]
        method = per_seed_runs[0].method
        if method not in POLICY_METHODS or not stage.evaluate:
            continue
        per_seed = [{"seed": r.seed, "status": r.status, "error": r.error, **(r.evaluation or {})} for r in per_seed_runs]
        entry: dict[str, Any] = {"name": name, "method": method, "status": overall_status(per_seed_runs)}
        for key in (*QUALITY_METRICS, *COST_METRICS, *EXTRA_METRICS):
            values = [s[key] for s in per_seed if isinstance(s.get(key), (int, float)) and not _nan(s[key])]
            mean, std = mean_std(values) if values else (None, None)
            entry[key] = mean
            if len(comparison.seeds) > 1:
                entry[f"{key}_std"] = std
        entry["seeds"] = [r.seed for r in per_seed_runs]
        entry["errors"] = [f"seed {r.seed}: {r.error}" for r in per_seed_runs if r.error]
        entry["per_seed"] = per_seed
        results.append(entry)
    return results


def overall_status(runs: list[StageRun]) -> str:
    if all(r.evaluation is not None for r in runs):
        return "ok"
    return "failed" if any(r.status == "failed" for r in runs) else ("skipped" if runs else "missing")


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# ----------------------------------------------------------------------------------------------
# Files


def write_outputs(comparison: Comparison, outcome: Outcome) -> None:
    out = comparison.output_dir
    write_json(out / "results.json", outcome.results)
    write_csv(out / "results.csv", outcome.results)
    plots = make_plots(comparison, outcome)
    (out / "report.md").write_text(report_markdown(comparison, outcome, plots), encoding="utf-8")
    log_wandb(comparison, outcome, plots)


def csv_columns(results: list[dict[str, Any]]) -> list[str]:
    keys = ["name", "method", "status"]
    for key in (*QUALITY_METRICS, *EXTRA_METRICS, *COST_METRICS):
        keys.append(key)
        if any(f"{key}_std" in r for r in results):
            keys.append(f"{key}_std")
    return keys


def write_csv(path: Path, results: list[dict[str, Any]]) -> None:
    columns = csv_columns(results)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})


def best_rows(results: list[dict[str, Any]], key: str) -> set[str]:
    """Names of the policies with the best value of `key` (ties all marked); none for metrics without a direction."""
    direction = HIGHER_IS_BETTER.get(key)
    values = {r["name"]: r[key] for r in results if isinstance(r.get(key), (int, float))}
    if direction is None or len(values) < 2:
        return set()
    best = max(values.values()) if direction else min(values.values())
    return {name for name, v in values.items() if v == best}


def fmt(value: Any, std: Any = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    if isinstance(std, (int, float)):
        text += f" ± {std:.3f}"
    return text


def table(results: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    best = {k: best_rows(results, k) for k in keys}
    lines = ["| policy | method | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for r in results:
        cells = []
        for k in keys:
            cell = fmt(r.get(k), r.get(f"{k}_std"))
            cells.append(f"**{cell}**" if r["name"] in best[k] else cell)
        lines.append(f"| {r['name']} | {r['method']} | " + " | ".join(cells) + " |")
    return lines


def stage_cost_rows(comparison: Comparison, outcome: Outcome) -> list[str]:
    """Cost of every stage (reward model included), averaged over seeds, from the runs' manifests."""
    lines = [
        "| stage | method | status | wall seconds | train tokens | generated tokens | peak memory (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in comparison.stages:
        runs = [outcome.runs[s][name] for s in comparison.seeds if name in outcome.runs[s]]
        manifests = [read_json(r.run_dir / "manifest.json") for r in runs if r.ok]
        costs = [{**(m.get("cost") or {}), "wall_seconds": m.get("wall_seconds")} for m in manifests]

        def avg(key: str, costs: list[dict[str, Any]] = costs) -> float | None:
            values = [c[key] for c in costs if isinstance(c.get(key), (int, float))]
            return sum(values) / len(values) if values else None

        status = ", ".join(sorted({r.status for r in runs}))
        lines.append(
            f"| {name} | {runs[0].method} | {status} | {fmt(avg('wall_seconds'))} | {fmt(avg('train_tokens'))} | "
            f"{fmt(avg('generated_tokens'))} | {fmt(avg('peak_memory_mb'))} |"
        )
    return lines


def report_markdown(comparison: Comparison, outcome: Outcome, plots: dict[str, str]) -> str:
    results = outcome.results
    seeds = ", ".join(str(s) for s in comparison.seeds)
    base_model = (comparison.base.get("model") or {}).get("name_or_path", "?")
    lines = [
        f"# Comparison: {comparison.name}",
        "",
        f"Base model `{base_model}`, seeds {seeds}. Every policy is evaluated on the same held-out prompts with the same "
        "sampling and seed. Best value per column in bold" + (" (mean ± std over seeds)." if len(comparison.seeds) > 1 else "."),
        "",
    ]
    baseline = comparison.baseline_stage
    if baseline:
        lines += [
            f"Win rate is against `{baseline}`'s responses (ties half); `kl_to_reference` and `preference_accuracy` use "
            f"`{baseline}` as the reference, so `{baseline}` itself reads 0 and 0.5.",
            "",
        ]
    lines += ["## Quality", "", *table(results, QUALITY_METRICS), "", "## Cost of training", ""]
    lines += [*table(results, ("wall_seconds", "train_tokens", "generated_tokens", "peak_memory_mb")), ""]
    lines += ["Every stage, including those that are not policies:", "", *stage_cost_rows(comparison, outcome), ""]
    if plots:
        lines += ["## Plots", ""]
        for title, name in plots.items():
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
    failed = outcome.failed
    if failed:
        lines += ["## Failed or skipped stages", ""]
        lines += [f"- seed {r.seed}, `{r.stage.name}` ({r.method}): {r.status} - {r.error}" for r in failed]
        lines.append("")
    lines += ["## Where things are", ""]
    lines += [
        f"- seed {s}: `{comparison.output_dir / f'seed-{s}'}/STAGE/` (eval.json, eval_samples.jsonl, manifest.json, metrics.jsonl, model/)"
        for s in comparison.seeds
    ]
    lines += ["- `results.json`, `results.csv`: every metric per policy", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plots


def make_plots(comparison: Comparison, outcome: Outcome) -> dict[str, str]:
    """Title -> PNG file name in the output directory, for the plots the data supports."""
    import matplotlib

    matplotlib.use("Agg")
    plots: dict[str, str] = {}
    out = comparison.output_dir
    evaluated = [r for r in outcome.results if r["status"] == "ok"]
    if evaluated:
        plots["Reward vs KL to the reference"] = frontier_plot(evaluated, out / "reward_vs_kl.png")
        if any(r.get("win_rate_vs_baseline") is not None for r in evaluated):
            plots["Win rate vs the baseline"] = win_rate_plot(evaluated, len(comparison.seeds), out / "win_rate.png")
        plots["Response lengths"] = length_plot(comparison, outcome, out / "response_lengths.png")
    curves = best_of_n_curves(comparison, outcome)
    if curves:
        plots["Best-of-n expected reward (rejection sampling)"] = best_of_n_plot(curves, out / "best_of_n.png")
    return plots


def frontier_plot(results: list[dict[str, Any]], path: Path) -> str:
    import matplotlib.pyplot as plt

    key = "gold_reward_mean" if any(r.get("gold_reward_mean") is not None for r in results) else "reward_mean"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, r in enumerate(results):
        points = [(s.get("kl_to_reference"), s.get(key)) for s in r["per_seed"] if s.get(key) is not None]
        if not points or r.get(key) is None:
            continue
        color = f"C{i % 10}"
        if len(points) > 1:  # one faint dot per seed around the mean
            xs, ys = zip(*points)
            ax.scatter(xs, ys, alpha=0.35, color=color)
        ax.scatter([r["kl_to_reference"]], [r[key]], marker="D", s=60, color=color, label=f"{r['name']} ({r['method']})")
        ax.annotate(r["name"], (r["kl_to_reference"], r[key]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("KL(policy || reference), nats per response")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title("Reward vs KL to the reference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def win_rate_plot(results: list[dict[str, Any]], num_seeds: int, path: Path) -> str:
    """Bars: mean win rate; error bars: std over seeds, or with one seed the standard error over prompts."""
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    rates = [r.get("win_rate_vs_baseline") or 0.0 for r in results]
    errors = [(r.get("win_rate_vs_baseline_std") if num_seeds > 1 else r.get("win_rate_stderr")) or 0.0 for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, rates, yerr=errors, capsize=6, color="#4c72b0")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate vs baseline")
    ax.set_title("Win rate" + (f" (std over {num_seeds} seeds)" if num_seeds > 1 else " (standard error over prompts)"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def length_plot(comparison: Comparison, outcome: Outcome, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    data, labels = [], []
    for r in outcome.results:
        if r["status"] != "ok":
            continue
        lengths = [
            row["num_tokens"]
            for seed in comparison.seeds
            for row in read_jsonl(outcome.runs[seed][r["name"]].run_dir / "eval_samples.jsonl")
        ]
        data.append(lengths)
        labels.append(r["name"])
    ax.boxplot(data, tick_labels=labels, showmeans=True)
    ax.set_ylabel("response length (tokens)")
    ax.set_title("Response length distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def best_of_n_curves(comparison: Comparison, outcome: Outcome) -> dict[str, dict[int, float]]:
    """Per rejection-sampling stage (first seed that has it): n -> expected best-of-n reward, from its metrics.jsonl."""
    curves: dict[str, dict[int, float]] = {}
    for name in comparison.stages:
        for seed in comparison.seeds:
            run = outcome.runs[seed].get(name)
            if run is None or not run.ok or run.method != "rejection_sampling":
                continue
            curve: dict[int, float] = {}
            for line in read_jsonl(run.run_dir / "metrics.jsonl"):
                for key, value in line.items():
                    if key.startswith("rs/best_of_"):
                        curve[int(key.rsplit("_", 1)[1])] = value
            if curve:
                curves[name] = dict(sorted(curve.items()))
                break
    return curves


def best_of_n_plot(curves: dict[str, dict[int, float]], path: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (samples per prompt)")
    ax.set_ylabel("expected best-of-n reward")
    ax.set_title("Best-of-n curve (rejection sampling's reward source)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# ----------------------------------------------------------------------------------------------
# W&B


def log_wandb(comparison: Comparison, outcome: Outcome, plots: dict[str, str]) -> None:
    """A summary run in the comparison's group: the results table and the plots."""
    from workbench.tracking import redact, wandb_mode

    tracking = comparison.base.get("tracking") or {}
    mode = wandb_mode(tracking.get("mode", "auto"))
    if mode == "disabled":
        return
    import wandb

    run = wandb.init(
        project=tracking.get("project", "workbench"),
        entity=tracking.get("entity"),
        group=comparison.name,
        job_type="compare",
        name=f"{comparison.name}-summary",
        mode=mode,
        dir=str(comparison.output_dir),
        config=redact({"comparison": comparison.source, "seeds": comparison.seeds, "stages": list(comparison.stages)}),
        reinit="finish_previous",
    )
    columns = csv_columns(outcome.results)
    rows = [[r.get(k) for k in columns] for r in outcome.results]
    run.log({"results": wandb.Table(columns=columns, data=rows)})
    for title, name in plots.items():
        run.log({f"plots/{Path(name).stem}": wandb.Image(str(comparison.output_dir / name), caption=title)})
    run.summary.update({f"{r['name']}/{k}": r[k] for r in outcome.results for k in QUALITY_METRICS if r.get(k) is not None})
    run.finish()
    (comparison.output_dir / "wandb_summary_run.txt").write_text(f"{run.id}\n", encoding="utf-8")
