"""The comparison's outputs: results.json / results.csv, report.md with findings, tables and PNG plots, and W&B.

Reads only what the stages wrote (eval.json, eval_samples.jsonl, reward_eval.json, manifest.json,
metrics.jsonl), so a report can be rebuilt from a finished comparison directory.

Uncertainty: every mean carries a standard error clustered by prompt, recomputed here from the
samples of every seed pooled by prompt; each policy's difference from the baseline is paired on
(seed, prompt, sample index) and given a 95% t interval (workbench.stats) which, with several seeds,
includes the between-seed variance (every seed is evaluated on the same held-out prompts: the split
is by content, not by seed). The spread of each mean between seeds is reported as a sample standard
deviation (n - 1) with the number of seeds.
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench import health as H
from workbench import stats as S
from workbench.comparison.types import BASELINE_METHOD, BASELINE_ROW
from workbench.config.methods import methods_where
from workbench.data.pipeline import read_json, read_jsonl, write_json
from workbench.evaluate import COST_METRICS, POLICY_METHODS, QUALITY_METRICS

if TYPE_CHECKING:
    from workbench.comparison.types import Comparison, Outcome, Stage, StageRun

# Which way is better, per metric (None: no "best", e.g. response length).
HIGHER_IS_BETTER: dict[str, bool | None] = {
    "reward_mean": True,
    "gold_reward_mean": True,
    "win_rate_vs_baseline": True,
    "kl_to_reference": False,
    "preference_accuracy": True,
    "response_length_mean": None,
    "distinct_2": True,
    "finished_share": None,
    "wall_seconds": False,
    "train_tokens": None,
    "generated_tokens": None,
    "peak_memory_mb": False,
}
# Metrics measured against the baseline itself: the baseline's own value (0 KL, 0.5) wins nothing.
RELATIVE_TO_BASELINE = ("win_rate_vs_baseline", "kl_to_reference", "preference_accuracy")
EXTRA_METRICS = ("kl_to_reference_k1", "finished_share")
SIZE_KEYS = ("num_prompts", "samples_per_prompt", "num_pairs")
# Metric -> the per-response field of eval_samples.jsonl it is the mean of.
SAMPLE_FIELDS = {
    "reward_mean": "reward",
    "gold_reward_mean": "gold",
    "win_rate_vs_baseline": "win",
    "kl_to_reference": "kl_to_reference",
    "response_length_mean": "num_tokens",
    "finished_share": "finished",
}
PAIRED_METRICS = ("reward_mean", "gold_reward_mean", "kl_to_reference", "response_length_mean")
SHORT = {
    "reward_mean": "reward",
    "gold_reward_mean": "gold reward",
    "win_rate_vs_baseline": "win rate",
    "kl_to_reference": "KL",
    "preference_accuracy": "pref. acc.",
    "response_length_mean": "length",
    "distinct_2": "distinct-2",
    "finished_share": "finished",
}
WARN = "⚠"
BEST_OF_N_METHODS = methods_where(sampling="best_of_n")  # their metrics.jsonl holds the best-of-n curve (rs/best_of_N)


# ----------------------------------------------------------------------------------------------
# Aggregation over seeds


def aggregate(comparison: Comparison, runs: dict[int, dict[str, StageRun]]) -> list[dict[str, Any]]:
    """One object per policy stage: every metric's mean over seeds (`<metric>_std`, n - 1, with several seeds),
    `<metric>_stderr` clustered by prompt, paired differences vs the baseline, sample sizes, health flags, per-seed values."""
    results = []
    num_seeds = len(comparison.seeds)
    for name in row_names(comparison):
        per_seed_runs = [runs[seed][name] for seed in comparison.seeds if name in runs[seed]]
        if not per_seed_runs:
            continue
        method = per_seed_runs[0].method
        if method != BASELINE_METHOD and (method not in POLICY_METHODS or not per_seed_runs[0].stage.evaluate):
            continue
        per_seed = [{"seed": r.seed, "status": r.status, "error": r.error, **(r.evaluation or {})} for r in per_seed_runs]
        stage = per_seed_runs[0].stage
        entry: dict[str, Any] = {"name": name, "method": method, "status": overall_status(per_seed_runs), "family": stage.family}
        if stage.sweep:
            entry["sweep"] = stage.sweep
        if stage.control_of:
            entry["control"] = {"of": stage.control_of, "seed_offset": stage.seed_offset, "how": control_how(comparison, stage)}
        for key in (*QUALITY_METRICS, *COST_METRICS, *EXTRA_METRICS):
            values = [s[key] for s in per_seed if isinstance(s.get(key), (int, float)) and not _nan(s[key])]
            mean, std, n = S.seed_spread(values) if values else (None, None, 0)
            entry[key] = mean
            if key in SAMPLE_FIELDS:
                entry[f"{key}_stderr"] = None
            if num_seeds > 1:
                entry[f"{key}_std"] = None if std is None or _nan(std) else std
        for key in SIZE_KEYS:
            entry[key] = next((s[key] for s in per_seed if isinstance(s.get(key), int)), None)
        if num_seeds > 1:
            entry["num_seeds"] = sum(1 for r in per_seed_runs if r.evaluation is not None)
        entry["seeds"] = [r.seed for r in per_seed_runs]
        entry["errors"] = [f"seed {r.seed}: {r.error}" for r in per_seed_runs if r.error]
        entry["per_seed"] = per_seed
        results.append(entry)
    add_uncertainty(comparison, runs, results)
    add_health(comparison, runs, results)
    return results


def row_names(comparison: Comparison) -> list[str]:
    """The stages in the order written (sweep points and a control included), then the row of a baseline given as
    `eval.baseline` (a model, not a stage) and its control."""
    external = [BASELINE_ROW, *([comparison.control_name] if comparison.control_name else [])]
    return [*comparison.stages, *(external if comparison.external_baseline else [])]


def control_how(comparison: Comparison, stage: Stage) -> str:
    """What the control repeats: the baseline stage's training with another seed, or `eval.baseline`'s sampling."""
    if comparison.external_baseline:
        return f"sampled again with evaluation seed {comparison.eval.seed} + {stage.seed_offset}"
    return f"trained again with the comparison's seed + {stage.seed_offset}"


def overall_status(runs: list[StageRun]) -> str:
    if all(r.evaluation is not None for r in runs):
        return "ok"
    return "failed" if any(r.status == "failed" for r in runs) else ("skipped" if runs else "missing")


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def samples_of(comparison: Comparison, runs: dict[int, dict[str, StageRun]], name: str) -> list[dict[str, Any]]:
    """Every evaluated response of a stage over all seeds, each tagged with its seed."""
    rows = []
    for seed in comparison.seeds:
        run = runs[seed].get(name)
        if run is not None and run.evaluation is not None:
            rows += [{**row, "seed": seed} for row in read_jsonl(run.run_dir / "eval_samples.jsonl")]
    return rows


def _value(row: dict[str, Any], field: str) -> float | None:
    v = row.get(field)
    return float(v) if isinstance(v, (int, float)) else None


def clustered(rows: list[dict[str, Any]], field: str) -> S.Estimate | None:
    """The mean of a per-response field with its error clustered by prompt (all seeds' samples of a prompt pooled)."""
    pairs = [(v, r["prompt_index"]) for r in rows if (v := _value(r, field)) is not None]
    if len(pairs) < len(rows) or len(pairs) < 2:
        return None
    values, clusters = zip(*pairs)
    return S.clustered_mean(list(values), list(clusters))


def seeded(rows: list[dict[str, Any]], field: str) -> S.Estimate | None:
    """The mean of a per-response field over seeds and prompts, its interval holding across both (seed_and_prompt_mean)."""
    triples = [(v, r["seed"], r["prompt_index"]) for r in rows if (v := _value(r, field)) is not None]
    if len(triples) < len(rows) or len(triples) < 2:
        return None
    values, seeds, prompts = zip(*triples)
    return S.seed_and_prompt_mean(values, seeds, prompts)


def paired(rows: list[dict[str, Any]], base_rows: list[dict[str, Any]], field: str) -> S.Estimate | None:
    """policy - baseline on the same (seed, prompt, sample index), clustered by prompt, with the seed variance."""
    if any("sample_index" not in r for r in (*rows, *base_rows)):
        return None  # samples from an older evaluation cannot be paired
    base = {_key(r): _value(r, field) for r in base_rows}
    policy, baseline, clusters, seeds = [], [], [], []
    for r in rows:
        a, b = _value(r, field), base.get(_key(r))
        if a is None or b is None:
            return None
        policy.append(a)
        baseline.append(b)
        clusters.append(r["prompt_index"])
        seeds.append(r["seed"])
    return S.paired_difference(policy, baseline, clusters, seeds=seeds) if len(policy) > 1 else None


def _key(row: dict[str, Any]) -> tuple[Hashable, ...]:
    return (row["seed"], row["prompt_index"], row["sample_index"])


def _interval(est: S.Estimate, offset: float = 0.0) -> dict[str, Any]:
    """An estimate less `offset` as results.json's `vs_baseline` entry: which interval, and each seed's value."""
    d: dict[str, Any] = {
        "difference": est.mean - offset,
        "stderr": est.stderr,
        "low": est.low - offset,
        "high": est.high - offset,
        "interval": est.interval,
        "df": est.df,
    }
    if est.per_seed:
        d["per_seed"] = [v - offset for v in est.per_seed]
    return d


def add_uncertainty(comparison: Comparison, runs: dict[int, dict[str, StageRun]], results: list[dict[str, Any]]) -> None:
    """`<metric>_stderr` from the samples, and `vs_baseline`: paired differences with 95% t intervals."""
    baseline = comparison.baseline_name
    base_rows = samples_of(comparison, runs, baseline) if baseline else []
    prompts = list(dict.fromkeys(row["prompt_index"] for row in base_rows))
    draws = S.bootstrap_draws(len(prompts), comparison.eval.bootstrap_samples, comparison.eval.seed) if prompts else []
    for r in results:
        if r["status"] != "ok":
            continue
        rows = samples_of(comparison, runs, r["name"])
        for key, field in SAMPLE_FIELDS.items():
            est = clustered(rows, field)
            r[f"{key}_stderr"] = est.stderr if est is not None else None
        vs: dict[str, Any] = {}
        if base_rows and r["name"] != baseline:
            for key in PAIRED_METRICS:
                est = paired(rows, base_rows, SAMPLE_FIELDS[key])
                if est is not None:
                    vs[key] = _interval(est)
            win = seeded(rows, "win")
            if win is not None:  # the win rate already pairs each response with the baseline's: its distance from 0.5
                vs["win_rate_vs_baseline"] = _interval(win, 0.5)
            add_length_control(r, rows, base_rows, prompts, draws)
        r["vs_baseline"] = vs


def add_length_control(
    r: dict[str, Any], rows: list[dict[str, Any]], base_rows: list[dict[str, Any]], prompts: list[Any], draws: list[list[int]]
) -> None:
    """`lc_win_rate_vs_baseline` with its 95% prompt-bootstrap interval (`_low`, `_high`), and the interval of the raw
    win rate less it (`length_control`), from each response's win and its length less the baseline's response's."""
    base = {_key(b): b.get("num_tokens") for b in base_rows}
    paired_rows = [
        (w, row["num_tokens"] - base[k], row["prompt_index"])
        for row in rows
        if (w := _value(row, "win")) is not None
        and isinstance(base.get(k := _key(row)), int)
        and isinstance(row.get("num_tokens"), int)
    ]
    if len(paired_rows) < len(rows) or len(paired_rows) < 2 or {p for _, _, p in paired_rows} != set(prompts):
        return
    order = {p: i for i, p in enumerate(prompts)}  # the draws index prompts in the baseline's order
    wins, lengths, where = zip(*[(w, d, order[p]) for w, d, p in paired_rows])
    lc = S.length_controlled(wins, lengths, where, draws)
    r["lc_win_rate_vs_baseline"], r["lc_win_rate_vs_baseline_low"], r["lc_win_rate_vs_baseline_high"] = (
        lc.lc,
        lc.lc_low,
        lc.lc_high,
    )
    r["length_control"] = {
        "raw": lc.raw,
        "raw_low": lc.raw_low,
        "raw_high": lc.raw_high,
        "raw_minus_lc": lc.gap,
        "raw_minus_lc_low": lc.gap_low,
        "raw_minus_lc_high": lc.gap_high,
        "interval": "prompt bootstrap",
    }


def reward_model_summary(comparison: Comparison, runs: dict[int, dict[str, StageRun]]) -> dict[str, Any] | None:
    """The reward stage's held-out accuracy, length-only baseline and margins over every seed's model.

    Seeds scored on the same held-out pairs (the same `inputs_fingerprint`: the split is by content, not seed) count
    each pair once, with its accuracy averaged over the seeds; `num_pairs` is the number of distinct pairs."""
    name = comparison.reward_stage
    if not name:
        return None
    evals = [
        read_json(runs[s][name].run_dir / "reward_eval.json") for s in comparison.seeds if name in runs[s] and runs[s][name].ok
    ]
    evals = [e for e in evals if e.get("num_pairs")]
    if not evals:
        return None
    groups: dict[str, list[dict[str, Any]]] = {}
    for i, e in enumerate(evals):  # an evaluation without its fingerprint counts as pairs of its own
        groups.setdefault(e.get("inputs_fingerprint") or f"seed {i}", []).append(e)
    per_pair: list[float] = []
    length_right = 0.0
    for group in groups.values():
        per_pair += S.replicate_means([S.win_indicators(e["margins"], [0.0] * len(e["margins"])) for e in group])
        length_right += group[0]["length_baseline_accuracy"] * group[0]["num_pairs"]
    n = len(per_pair)
    logged = [line for e in evals[:1] for line in read_jsonl(runs[comparison.seeds[0]][name].run_dir / "metrics.jsonl")]
    return {
        "stage": name,
        "accuracy": sum(per_pair) / n,
        "length_baseline_accuracy": length_right / n,
        "num_pairs": n,
        "num_seeds": len(evals),
        "margins": [m for e in evals for m in e["margins"]],
        "training_eval_accuracy": (H.series(logged, "eval/accuracy") or [None])[-1],
    }


def reward_vs_gold(comparison: Comparison, runs: dict[int, dict[str, StageRun]]) -> dict[str, Any] | None:
    """The reward stage's model against the gold judge on the baseline's held-out responses (both scored every one;
    with its control, the baseline model's second set of samples too): pairs of responses to one prompt whose gold
    rewards differ, ordered alike or not, with intervals clustered by prompt (a prompt's pairs share responses). Needs no held-out preference
    pairs, so it also judges a proxy RM trained on on-policy pairs whose evaluation data holds prompts only."""
    base = comparison.baseline_name
    if not (comparison.reward_stage and comparison.eval.gold_reward and base):
        return None
    names = [base]
    if comparison.external_baseline and comparison.control_name:  # the same model sampled again: more responses
        names.append(comparison.control_name)
    samples = {name: samples_of(comparison, runs, name) for name in names}  # each eval_samples.jsonl read once
    groups: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
    for row in [r for rows in samples.values() for r in rows]:
        gold, judge = _value(row, "gold"), _value(row, "reward")
        if gold is not None and judge is not None:
            groups.setdefault((row["seed"], row["prompt_index"]), []).append((gold, judge, float(row["num_tokens"])))
    counts = [S.group_agreement(g) for g in groups.values()]
    totals = [c[0] for c in counts]
    if not sum(totals):
        return None
    judge, length = S.clustered_share([c[1] for c in counts], totals), S.clustered_share([c[2] for c in counts], totals)
    return {
        "stage": comparison.reward_stage,
        "responses_of": [n for n, rows in samples.items() if rows],
        "num_pairs": sum(totals),
        "num_prompts": judge.num_clusters,
        "accuracy": judge.mean,
        "accuracy_interval": [judge.low, judge.high],
        "length_rule_accuracy": length.mean,
        "length_rule_accuracy_interval": [length.low, length.high],
    }


def reward_vs_gold_line(check: dict[str, Any]) -> str:
    def share(key: str) -> str:
        low, high = check[f"{key}_interval"]
        return f"{check[key]:.3f} [{low:.3f}, {high:.3f}]"

    whose = " and ".join(f"`{n}`" for n in check["responses_of"])
    return (
        f"Reward model `{check['stage']}` against the gold judge on {whose}'s held-out responses: of "
        f"{check['num_pairs']} pairs of responses to the same prompt whose gold rewards differ ({check['num_prompts']} "
        f"prompts), it orders {share('accuracy')} as the gold does; the length-only rule (longer wins) "
        f"{share('length_rule_accuracy')}; a coin 0.5 (95% intervals clustered by prompt)."
    )


def uses_reward_model(comparison: Comparison, run: StageRun) -> bool:
    """Whether the policy was trained on the reward stage's model (RS, PPO)."""
    rm = (run.recipe.get("reward_model") or {}).get("name_or_path")
    return bool(comparison.reward_stage and rm and Path(rm).parent.name == comparison.reward_stage)


def add_health(comparison: Comparison, runs: dict[int, dict[str, StageRun]], results: list[dict[str, Any]]) -> None:
    """`health`: the flags of each policy (evaluation, training log, and the reward model it was trained on)."""
    by_name = {r["name"]: r for r in results}
    base = by_name.get(comparison.baseline_name or "")
    rm = reward_model_summary(comparison, runs)
    rm_flag = H.weak_reward_model(rm["accuracy"], rm["num_pairs"], rm["length_baseline_accuracy"]) if rm else None
    for r in results:
        flags: list[dict[str, str]] = []
        if r["status"] == "ok":
            vs = r.get("vs_baseline") or {}
            found = [
                H.length_cap(r.get("finished_share"), comparison.eval.generation.max_new_tokens),
                H.kl_blowup(r.get("kl_to_reference"), comparison.eval.kl_warning),
                None if r is base or base is None else H.diversity_collapse(r.get("distinct_2"), base.get("distinct_2")),
                H.reward_hacking(_estimate(vs.get("reward_mean")), _estimate(vs.get("gold_reward_mean"))),
                None if r is base or base is None else no_change(vs, base["name"]),
                length_bias(r),
                control_differs(comparison, r, vs),
            ]
            flags += [f for f in found if f is not None]
        for seed in comparison.seeds:
            run = runs[seed].get(r["name"])
            if run is None or not run.ok:
                continue
            loss_type = (run.recipe.get("train") or {}).get("loss_type") or ["sigmoid"]
            loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
            manifest, lines = read_json(run.run_dir / "manifest.json"), read_jsonl(run.run_dir / "metrics.jsonl")
            for f in H.run_flags(run.method, manifest, lines, loss_types):
                prefix = f"seed {seed}: " if len(comparison.seeds) > 1 else ""
                flags.append({"code": f["code"], "message": prefix + f["message"]})
            if rm_flag is not None and uses_reward_model(comparison, run) and rm_flag not in flags:
                flags.append(rm_flag)
        r["health"] = flags


def no_change(vs: dict[str, Any], baseline: str) -> H.Flag | None:
    """health.no_change on the paired differences, named as in the report's tables."""
    return H.no_change({SHORT[k]: _estimate(vs.get(k)) for k in PAIRED_METRICS}, baseline)


def length_bias(r: dict[str, Any]) -> H.Flag | None:
    """Raw and length-controlled win rates apart beyond their bootstrap interval (add_length_control)."""
    lc = r.get("length_control")
    if not lc:
        return None
    return H.length_bias(lc["raw"], r["lc_win_rate_vs_baseline"], lc["raw_minus_lc_low"], lc["raw_minus_lc_high"])


def control_differs(comparison: Comparison, r: dict[str, Any], vs: dict[str, Any]) -> H.Flag | None:
    """The control row differs from the baseline on the judge metric beyond its interval."""
    control = r.get("control")
    if not control:
        return None
    judge = "gold_reward_mean" if vs.get("gold_reward_mean") else "reward_mean"
    return H.control_differs(vs.get(judge), control["of"], control["how"], SHORT[judge])


def _estimate(d: dict[str, Any] | None) -> S.Estimate | None:
    return None if d is None else S.Estimate(d["difference"], d["stderr"], d["low"], d["high"], 0, 0, df=d.get("df"))


# ----------------------------------------------------------------------------------------------
# The reward-KL frontier and comparisons at matched KL


def per_prompt(rows: list[dict[str, Any]], field: str) -> dict[Any, float]:
    """Each prompt's mean of a per-response field over its samples (and seeds)."""
    sums: dict[Any, list[float]] = {}
    for row in rows:
        acc = sums.setdefault(row["prompt_index"], [0.0, 0.0])
        acc[0] += float(row[field])
        acc[1] += 1.0
    return {p: total / n for p, (total, n) in sums.items()}


def anchored(comparison: Comparison, runs: dict[int, dict[str, StageRun]], names: list[str]) -> bool:
    """Whether the baseline is a point of these policies' frontier: every one of them started from the baseline,
    which was also its KL reference (infinite regularisation gives back the starting model: KL 0, the baseline's
    reward). Read from what each evaluation recorded (eval.json `details`)."""
    from workbench.evaluate import same_model

    for seed in comparison.seeds:
        for name in names:
            run = runs[seed].get(name)
            if run is None:
                return False
            details = read_json(run.run_dir / "eval.json").get("details") or {}
            start, baseline = (run.recipe.get("model") or {}).get("name_or_path"), details.get("baseline")
            if not (baseline and same_model(details.get("reference"), baseline) and same_model(start, baseline)):
                return False
    return True


def frontier_summary(comparison: Comparison, outcome: Outcome) -> dict[str, Any] | None:
    """Judge reward against KL per family of policies (a sweep's points, or a stage alone), with 95% intervals on both
    axes, and every pair of families compared at matched KL (stats.matched_kl, prompt bootstrap); None without a policy."""
    results, runs, baseline = outcome.results, outcome.runs, comparison.baseline_name
    judge = judge_metric(results)
    field = SAMPLE_FIELDS[judge]
    policies = [
        r
        for r in results
        if r["status"] == "ok" and r["name"] != baseline and r.get(judge) is not None and r.get("kl_to_reference") is not None
    ]
    rows = {r["name"]: samples_of(comparison, runs, r["name"]) for r in policies}
    base = next((r for r in results if r["name"] == baseline and r["status"] == "ok"), None)
    base_rows = samples_of(comparison, runs, baseline) if base else []
    prompts = list(dict.fromkeys(row["prompt_index"] for row in base_rows)) or sorted(
        {row["prompt_index"] for v in rows.values() for row in v}
    )
    policies = [r for r in policies if set(per_prompt(rows[r["name"]], field)) == set(prompts)]
    if not policies:
        return None

    def column(rows_of: list[dict[str, Any]], f: str) -> list[float]:
        means = per_prompt(rows_of, f)
        return [means[p] for p in prompts]

    families: dict[str, list[dict[str, Any]]] = {}
    for r in policies:
        if not r.get("control"):
            families.setdefault(r["family"], []).append(r)
    anchor = None
    if base is not None and base.get(judge) is not None:
        est = seeded(base_rows, field)
        anchor = {"name": baseline, "kl": 0.0, "reward": base[judge]} | (
            {"reward_low": est.low, "reward_high": est.high} if est is not None else {}
        )
    out: dict[str, Any] = {"judge": judge, "anchor": anchor, "families": [], "matched_kl": [], "not_comparable": []}
    curves: dict[str, S.Frontier] = {}
    for family, members in families.items():
        points = []
        for r in members:
            kl, reward = seeded(rows[r["name"]], "kl_to_reference"), seeded(rows[r["name"]], field)
            points.append(
                {"name": r["name"], "sweep": r.get("sweep") or {}, "kl": r["kl_to_reference"], "reward": r[judge]}
                | ({"kl_low": kl.low, "kl_high": kl.high} if kl is not None else {})
                | ({"reward_low": reward.low, "reward_high": reward.high} if reward is not None else {})
            )
        points.sort(key=lambda p: p["kl"])
        is_anchored = anchor is not None and anchored(comparison, runs, [r["name"] for r in members])
        out["families"].append({"family": family, "method": members[0]["method"], "anchored": is_anchored, "points": points})
        order = [next(r for r in members if r["name"] == p["name"]) for p in points]
        curves[family] = S.Frontier(
            [column(rows[r["name"]], "kl_to_reference") for r in order],
            [column(rows[r["name"]], field) for r in order],
            column(base_rows, field) if is_anchored else None,
        )
    draws = S.bootstrap_draws(len(prompts), comparison.eval.bootstrap_samples, comparison.eval.seed)
    names = list(curves)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            m = S.matched_kl(curves[a], curves[b], draws)
            if m is None:
                out["not_comparable"].append([a, b])
                continue
            out["matched_kl"].append(
                {
                    "a": a,
                    "b": b,
                    "verdict": m.verdict,
                    "at_point": m.at_point,
                    "kl_low": m.kl_range[0],
                    "kl_high": m.kl_range[1],
                    "grid": [
                        {"kl": x, "difference": d, "low": lo, "high": hi}
                        for x, d, lo, hi in zip(m.grid, m.difference, m.low, m.high)
                    ],
                }
            )
    out["bootstrap_samples"], out["num_prompts"] = len(draws), len(prompts)
    return out


# ----------------------------------------------------------------------------------------------
# Files


def write_outputs(comparison: Comparison, outcome: Outcome) -> None:
    out = comparison.output_dir
    write_json(out / "results.json", outcome.results)
    write_csv(out / "results.csv", outcome.results)
    rm = reward_model_summary(comparison, outcome.runs)
    if rm is not None:
        write_json(out / "reward_model.json", rm)
    gold_check = reward_vs_gold(comparison, outcome.runs)
    if gold_check is not None:
        write_json(out / "reward_vs_gold.json", gold_check)
    frontier = frontier_summary(comparison, outcome)
    if frontier is not None:
        write_json(out / "frontier.json", frontier)
    plots = make_plots(comparison, outcome, rm, frontier)
    (out / "report.md").write_text(report_markdown(comparison, outcome, plots, rm, frontier, gold_check), encoding="utf-8")
    log_wandb(comparison, outcome, plots)


LC = "lc_win_rate_vs_baseline"


def csv_columns(results: list[dict[str, Any]]) -> list[str]:
    keys = ["name", "method", "family", "status", *SIZE_KEYS]
    for key in (*QUALITY_METRICS, *EXTRA_METRICS, *COST_METRICS):
        keys.append(key)
        keys += [f"{key}_{x}" for x in ("stderr", "std") if any(f"{key}_{x}" in r for r in results)]
        if key == "win_rate_vs_baseline" and any(LC in r for r in results):  # the length-controlled one beside it
            keys += [LC, f"{LC}_low", f"{LC}_high"]
    return [*keys, "health"]


def csv_row(r: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    row = {k: ("" if r.get(k) is None else r[k]) for k in columns}
    row["health"] = " ".join(f["code"] for f in r.get("health") or [])
    return row


def write_csv(path: Path, results: list[dict[str, Any]]) -> None:
    columns = csv_columns(results)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            writer.writerow(csv_row(r, columns))


def best_rows(results: list[dict[str, Any]], key: str, baseline: str | None = None) -> set[str]:
    """Names of the policies with the best value of `key` (ties all marked); none for metrics without a direction.

    For metrics measured against the baseline (KL, win rate, preference accuracy) the baseline competes not.
    """
    direction = HIGHER_IS_BETTER.get(key)
    values = {
        r["name"]: r[key]
        for r in results
        if isinstance(r.get(key), (int, float)) and not (key in RELATIVE_TO_BASELINE and r["name"] == baseline)
    }
    if direction is None or len(values) < 2:
        return set()
    best = max(values.values()) if direction else min(values.values())
    return {name for name, v in values.items() if v == best}


def fmt(value: Any, err: Any = None, digits: int = 3) -> str:
    """Counts as integers, other values to `digits` decimals; `err` after ±."""
    if value is None or _nan(value):
        return "-"
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, int) or (
        isinstance(value, float) and err is None and (value.is_integer() and abs(value) >= 10 or abs(value) >= 1000)
    ):
        text = f"{round(value):,}"
    elif isinstance(value, float):
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    if isinstance(err, (int, float)) and not _nan(err):
        text += f" ± {err:.{digits}f}"
    return text


def fmt_interval(d: dict[str, float] | None, digits: int = 3) -> str:
    if not d:
        return "-"
    return f"{d['difference']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def judge_metric(results: list[dict[str, Any]]) -> str:
    """The metric verdicts rest on: the gold (independent) reward when there is one, else the pipeline's reward."""
    return "gold_reward_mean" if any(r.get("gold_reward_mean") is not None for r in results) else "reward_mean"


def policy_label(r: dict[str, Any]) -> str:
    return f"{r['name']} {WARN}" if r.get("health") else r["name"]


def quality_table(results: list[dict[str, Any]], baseline: str | None, num_seeds: int) -> list[str]:
    judge = judge_metric(results)
    keys = [k for k in QUALITY_METRICS if any(r.get(k) is not None for r in results)]
    best = {k: best_rows(results, k, baseline) for k in keys}
    head = [
        "policy",
        "method",
        "prompts × samples, pairs",
        *[SHORT[k] for k in keys],
        *([f"Δ {SHORT[judge]} vs {baseline} [95% CI]"] if baseline else []),
        "finished",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        size = f"{r['num_prompts']} × {r['samples_per_prompt']}, {r['num_pairs']}" if r.get("num_prompts") else "-"
        cells = []
        for k in keys:
            cell = fmt(r.get(k), r.get(f"{k}_stderr"))
            if num_seeds > 1 and r.get(f"{k}_std") is not None:
                cell += f" (sd {r[f'{k}_std']:.3f})"
            cells.append(f"**{cell}**" if r["name"] in best[k] else cell)
        if baseline:
            cells.append("(baseline)" if r["name"] == baseline else fmt_interval((r.get("vs_baseline") or {}).get(judge)))
        lines.append(
            f"| {policy_label(r)} | {r['method']} | {size} | " + " | ".join(cells) + f" | {fmt(r.get('finished_share'))} |"
        )
    return lines


def cost_table(results: list[dict[str, Any]]) -> list[str]:
    keys = ("wall_seconds", "train_tokens", "generated_tokens", "peak_memory_mb")
    best = {k: best_rows(results, k) for k in keys}
    lines = [
        "| policy | method | wall seconds | train tokens | generated tokens | peak memory (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        cells = [fmt(r.get(k), digits=0) if r.get(k) is not None else "-" for k in keys]
        cells = [f"**{c}**" if r["name"] in best[k] else c for c, k in zip(cells, keys)]
        lines.append(f"| {policy_label(r)} | {r['method']} | " + " | ".join(cells) + " |")
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

        def avg(key: str, costs: list[dict[str, Any]] = costs) -> str:
            values = [c[key] for c in costs if isinstance(c.get(key), (int, float))]
            return f"{round(sum(values) / len(values)):,}" if values else "-"

        status = ", ".join(sorted({r.status for r in runs}))
        lines.append(
            f"| {name} | {runs[0].method} | {status} | {avg('wall_seconds')} | {avg('train_tokens')} | "
            f"{avg('generated_tokens')} | {avg('peak_memory_mb')} |"
        )
    return lines


# How each kind of interval (stats.Estimate.interval) is described in the report; {df}: seeds - 1
INTERVAL_TEXT = {
    S.SEEDS_AND_PROMPTS: "their intervals add the seed variance component estimated from the per-seed differences "
    "(seeds × prompts, crossed random effects: a seed's effect moves every prompt alike, which pooling the seeds per "
    "prompt hides), with t on Satterthwaite degrees of freedom (near seeds − 1 = {df} when the seeds disagree, near "
    "prompts − 1 when they agree)",
    S.SEEDS: "their intervals are t intervals over the per-seed differences (the seeds were evaluated on different "
    "prompts), seeds − 1 = {df} degrees of freedom",
}
VERDICTS = ("better", "noise", "unchanged", "disagree", "worse")


def interval_kinds(results: list[dict[str, Any]]) -> set[str]:
    """The kinds of interval (stats.PROMPTS, SEEDS_AND_PROMPTS, SEEDS) the paired differences carry."""
    return {d.get("interval") for r in results for d in (r.get("vs_baseline") or {}).values()}


def evidence_sentence(comparison: Comparison, results: list[dict[str, Any]], sized: dict[str, Any]) -> str:
    """How much evidence each policy has, and which intervals the verdicts rest on."""
    baseline, seeds = comparison.baseline_name, len(comparison.seeds)
    text = (
        f"Evidence per policy: {sized['num_prompts']} held-out prompts × {sized['samples_per_prompt']} samples"
        + (f" for each of {seeds} seeds" if seeds > 1 else "")
        + f", and {sized['num_pairs']} held-out preference pairs. Intervals are 95% Student-t intervals with "
        "standard errors clustered by prompt (per-prompt means, then their spread)"
    )
    if baseline:
        text += f"; differences are paired with `{baseline}`'s response to the same " + (
            "seed, prompt and sample index" if seeds > 1 else "prompt and sample index"
        )
        kinds = interval_kinds(results)
        text += "".join(f"; {INTERVAL_TEXT[k].format(df=seeds - 1)}" for k in (S.SEEDS_AND_PROMPTS, S.SEEDS) if k in kinds)
    text += "."
    return text + (f" Seed-to-seed spread is the sample sd (n−1) over {seeds} seeds, shown as (sd ...)." if seeds > 1 else "")


def verdict(r: dict[str, Any], d: dict[str, Any]) -> str:
    """unchanged (flagged no_change: it did not move), better / worse (interval beyond zero and every seed on that
    side), disagree (seeds of both signs or at zero: never a winner), or noise."""
    if any(f["code"] == "no_change" for f in r.get("health") or []):
        return "unchanged"
    if d.get("per_seed") and S.sign_of_every(d["per_seed"]) == 0:
        return "disagree"
    return "better" if d["low"] > 0 else "worse" if d["high"] < 0 else "noise"


def verdict_text(r: dict[str, Any], d: dict[str, Any]) -> str:
    """`name` difference [interval] (per-seed differences) (win rate [interval])."""
    text = f"`{r['name']}` {fmt_interval(d)}"
    if d.get("per_seed"):
        text += " (seeds " + ", ".join(f"{v:+.3f}" for v in d["per_seed"]) + ")"
    win = (r.get("vs_baseline") or {}).get("win_rate_vs_baseline")
    if win:  # a rate: its t interval is shown clipped to [0, 1]
        lo, hi = max(0.0, 0.5 + win["low"]), min(1.0, 0.5 + win["high"])
        text += f" (win rate {0.5 + win['difference']:.2f} [{lo:.2f}, {hi:.2f}])"
    return text


def holm_held(rows: list[dict[str, Any]], judge: str) -> set[str]:
    """The policies whose difference from the baseline is above zero with Holm's step-down correction across all of
    them at 5%; p-values from the same t intervals the report shows (the seed-level ones with several seeds)."""
    ds = [r["vs_baseline"][judge] for r in rows]
    pvalues = [S.t_pvalue(d["difference"], d.get("stderr"), d.get("df")) if d["difference"] > 0 else 1.0 for d in ds]
    rejected, _ = S.holm(pvalues)
    return {r["name"] for r, keep in zip(rows, rejected) if keep}


def verdict_lines(comparison: Comparison, ok: list[dict[str, Any]], judge: str) -> tuple[list[str], dict[str, list[str]]]:
    """The verdict bullets on the judge metric, and the policy names under each verdict."""
    baseline = comparison.baseline_name
    texts: dict[str, list[str]] = {v: [] for v in VERDICTS}
    names: dict[str, list[str]] = {v: [] for v in VERDICTS}
    judged = [r for r in ok if r["name"] != baseline and not r.get("control") and (r.get("vs_baseline") or {}).get(judge)]
    held = holm_held(judged, judge)
    for r in judged:
        d = r["vs_baseline"][judge]
        v = verdict(r, d)
        text = f"`{r['name']}`" if v == "unchanged" else verdict_text(r, d)
        if v == "better" and r["name"] not in held:  # its own interval is above zero, but not once k claims are made
            v, text = "noise", text + " (above zero alone, not after Holm's correction)"
        texts[v].append(text)
        names[v].append(r["name"])
    if not baseline:
        return [], names
    judge_name = "gold reward (the independent scorer)" if judge == "gold_reward_mean" else "the pipeline's reward"
    every_seed = " and every seed's difference above zero" if len(comparison.seeds) > 1 else ""
    lines = [f"Judged by {judge_name}, difference from `{baseline}`:", ""]
    holm_note = f", Holm-corrected across {len(judged)} policies at 5%" if len(judged) > 1 else ""
    lines.append(
        f"- **Beat `{baseline}`** (interval above zero{every_seed}{holm_note}): " + ("; ".join(texts["better"]) or "none")
    )
    lines.append("- **Within noise** (interval includes zero): " + ("; ".join(texts["noise"]) or "none"))
    if texts["unchanged"]:
        lines.append("- **Unchanged** (did it train?): " + ", ".join(texts["unchanged"]))
    if texts["disagree"]:
        lines.append(
            "- **Seeds disagree** (the per-seed differences are not all of one sign: never counted as a win): "
            + "; ".join(texts["disagree"])
        )
    if texts["worse"]:
        lines.append(f"- **Worse than `{baseline}`** (interval below zero): " + "; ".join(texts["worse"]))
    return [*lines, ""], names


def warning_lines(flags: list[H.Flag]) -> list[str]:
    """Comparison-wide flags, one bullet each, then a blank line (nothing when there are none)."""
    return [*(f"- {WARN} **{f['code']}**: {f['message']}" for f in flags), ""] if flags else []


def _count(value: Any) -> str:
    return "-" if value is None else f"{round(value):,}"


def budget_lines(comparison: Comparison, ok: list[dict[str, Any]]) -> list[str]:
    """What is compared: seeds, each policy's own training budget, and a warning when budgets differ by over 2x."""
    seeds, baseline = comparison.seeds, comparison.baseline_name
    text = (
        f"What is compared: {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}). Each policy "
        "is trained by its own stage with its method's own settings (`stages.NAME.train`: learning rate, steps and batch "
        "differ per method)."
    )
    policies = [r for r in ok if r["name"] != baseline and r["method"] != BASELINE_METHOD and not r.get("control")]
    if not policies:
        return [text, ""]
    text += (
        " Training budget of each policy's own stage"
        + (f" (the baseline `{baseline}` not counted)" if baseline else "")
        + (", mean over seeds" if len(seeds) > 1 else "")
        + ": "
        + "; ".join(
            f"`{r['name']}` {_count(r.get('train_tokens'))} train tokens, {_count(r.get('generated_tokens'))} generated, "
            f"{_count(r.get('wall_seconds'))} s"
            for r in policies
        )
        + "."
    )
    tokens = {r["name"]: _tokens(r) for r in policies}
    found = [
        H.budget_mismatch(tokens, "tokens (trained + generated)"),
        H.budget_mismatch({r["name"]: r.get("wall_seconds") for r in policies}, "wall seconds"),
    ]
    return [text, "", *warning_lines([f for f in found if f is not None])]


def _tokens(r: dict[str, Any]) -> float | None:
    """Tokens trained on plus tokens generated (None when neither was recorded)."""
    parts = [r.get(k) for k in ("train_tokens", "generated_tokens") if isinstance(r.get(k), (int, float))]
    return float(sum(parts)) if parts else None


def findings(
    comparison: Comparison, results: list[dict[str, Any]], rm: dict[str, Any] | None, gold_check: dict[str, Any] | None = None
) -> list[str]:
    """The verdicts in words: who beats the baseline beyond noise, who does not, and every warning next to its policy."""
    judge = judge_metric(results)
    ok = [r for r in results if r["status"] == "ok"]
    lines = ["## Findings", ""]
    sized = next((r for r in ok if r.get("num_prompts")), None)
    if sized:
        lines += [evidence_sentence(comparison, results, sized), ""]
        sizes = {k: getattr(comparison.eval, k) for k in ("num_prompts", "num_pairs")}
        lines += warning_lines(H.eval_shortfalls(sizes, sized))
    lines += budget_lines(comparison, ok)
    verdicts, names = verdict_lines(comparison, ok, judge)
    lines += verdicts
    top = max((r for r in ok if r.get(judge) is not None), key=lambda r: r[judge], default=None)
    flagged = [r for r in results if r.get("health")]
    # a lead is only a lead when it beat the baseline (or there is no baseline to beat)
    crowned = top is not None and (top["name"] in names["better"] or not comparison.baseline_name)
    if crowned and top.get("health"):
        lines += [
            f"{WARN} The highest {SHORT[judge]} belongs to `{top['name']}`, which is flagged below: "
            "do not take its lead at face value.",
            "",
        ]
    if flagged:
        lines += ["Health warnings:", ""]
        for r in flagged:
            for f in r["health"]:
                lines.append(f"- {WARN} `{r['name']}` — **{f['code']}**: {f['message']}")
        lines.append("")
    else:
        lines += ["No health warnings: every policy finishes its responses, stays diverse and within the KL limit.", ""]
    if rm is not None:
        lines.append(
            f"Reward model `{rm['stage']}`: held-out accuracy {rm['accuracy']:.3f} on {rm['num_pairs']} pairs "
            f"vs {rm['length_baseline_accuracy']:.3f} for the length-only rule (details below)."
        )
        lines.append("")
    if gold_check is not None:
        lines += [reward_vs_gold_line(gold_check), ""]
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        lines += ["Not evaluated: " + ", ".join(f"`{r['name']}` ({r['status']})" for r in failed) + ".", ""]
    return lines


def reward_model_section(rm: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """Accuracy against a coin's band for the distinct held-out pairs; margins of every seed's model pooled."""
    margins = sorted(rm["margins"])
    n, pairs, seeds = len(margins), rm["num_pairs"], rm.get("num_seeds", 1)

    def q(p: float) -> float:
        return margins[min(n - 1, int(p * (n - 1) + 0.5))]

    half = 1.96 * math.sqrt(0.25 / pairs)
    scored = f" (each scored by {seeds} seeds' models)" if seeds > 1 else ""
    wrong = f"of the {n} scored pairs" if seeds > 1 else "of pairs"
    lines = [
        f"## Reward model (`{rm['stage']}`)",
        "",
        "Every verdict on `reward` and every RS / PPO policy rests on this model. Scored on the same held-out pairs "
        "as the policies' preference accuracy:",
        "",
        "| held-out pairs | accuracy | length-only rule (longer wins) | accuracy a coin reaches (95%) | accuracy logged in training |",
        "|---|---|---|---|---|",
        f"| {pairs}{scored} | {rm['accuracy']:.3f} | {rm['length_baseline_accuracy']:.3f} | 0.5 ± {half:.3f} | "
        f"{fmt(rm.get('training_eval_accuracy'))} |",
        "",
        "Margin (score of chosen − score of rejected, normalized rewards): "
        f"mean {sum(margins) / n:+.3f}, 5% {q(0.05):+.3f}, 25% {q(0.25):+.3f}, median {q(0.5):+.3f}, "
        f"75% {q(0.75):+.3f}, 95% {q(0.95):+.3f}; {sum(m < 0 for m in margins) / n:.0%} {wrong} ranked the wrong way.",
        "",
    ]
    if "Reward model margins" in plots:
        lines += [f"![Reward model margins]({plots['Reward model margins']})", ""]
    return lines


def baseline_note(comparison: Comparison, baseline: str) -> str:
    """What the baseline row is, and which model the KL and preference accuracy are measured against."""
    from workbench.evaluate import same_model

    cfg = comparison.eval
    text = (
        f"`{baseline}` is the model `{cfg.baseline}` (`eval.baseline`), evaluated as is. " if comparison.external_baseline else ""
    )
    text += f"Win rate is against `{baseline}`'s responses (ties half); `kl_to_reference` and `preference_accuracy` use "
    if cfg.reference is None and not comparison.external_baseline or same_model(cfg.reference, cfg.baseline):
        text += f"`{baseline}` as the reference, so `{baseline}` itself reads 0 and 0.5."
    elif cfg.reference:
        text += f"`{cfg.reference}` (`eval.reference`) as the reference."
    else:
        text += "each policy's starting model as the reference."
    return text + f" `finished`: share of responses that end before the {cfg.generation.max_new_tokens}-token cap."


def report_markdown(
    comparison: Comparison,
    outcome: Outcome,
    plots: dict[str, str],
    rm: dict[str, Any] | None = None,
    frontier: dict[str, Any] | None = None,
    gold_check: dict[str, Any] | None = None,
) -> str:
    results = outcome.results
    seeds = ", ".join(str(s) for s in comparison.seeds)
    base_model = (comparison.base.get("model") or {}).get("name_or_path", "?")
    baseline = comparison.baseline_name
    lines = [f"# Comparison: {comparison.name}", "", *findings(comparison, results, rm, gold_check)]
    lines += [*control_lines(results, baseline), *matched_kl_lines(frontier)]
    lines += [
        "## Quality",
        "",
        f"Base model `{base_model}`, seeds {seeds}. Every policy is evaluated on the same held-out prompts with the same "
        "sampling and seed. Values are mean ± standard error clustered by prompt; best value per column in bold "
        "(the baseline is not ranked on metrics measured against itself). "
        f"{WARN} marks a policy with health warnings (see Findings).",
        "",
    ]
    if baseline:
        lines += [baseline_note(comparison, baseline), ""]
    lines += [*quality_table(results, baseline, len(comparison.seeds)), ""]
    vs_rows = [r for r in results if r.get("vs_baseline")]
    if vs_rows:
        keys = [k for k in (*PAIRED_METRICS, "win_rate_vs_baseline") if any(k in r["vs_baseline"] for r in vs_rows)]
        same = "seed, prompt and sample index" if len(comparison.seeds) > 1 else "prompt and sample index"
        lines += [f"Paired differences from `{baseline}` (same {same}), {difference_interval_label(vs_rows)}:", ""]
        lines += [
            "| policy | " + " | ".join(f"Δ {SHORT[k]}" if k != "win_rate_vs_baseline" else "win rate − 0.5" for k in keys) + " |"
        ]
        lines += ["|" + "---|" * (len(keys) + 1)]
        lines += [
            f"| {policy_label(r)} | " + " | ".join(fmt_interval(r["vs_baseline"].get(k)) for k in keys) + " |" for r in vs_rows
        ]
        lines.append("")
    lines += length_control_lines(results, baseline)
    if rm is not None:
        lines += reward_model_section(rm, plots)
    lines += ["## Cost of training", "", *cost_table([r for r in results if r["method"] != BASELINE_METHOD]), ""]
    lines += ["Every stage, including those that are not policies:", "", *stage_cost_rows(comparison, outcome), ""]
    if plots:
        lines += ["## Plots", ""]
        for title, name in plots.items():
            if title != "Reward model margins":
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
    lines += ["- `results.json`, `results.csv`: every metric per policy, with standard errors, sample sizes and health flags", ""]
    return "\n".join(lines)


def control_lines(results: list[dict[str, Any]], baseline: str | None) -> list[str]:
    """What the control says about the noise: its difference from the baseline within its interval, or a warning."""
    control = next((r for r in results if r.get("control") and r["status"] == "ok"), None)
    if control is None or not baseline:
        return []
    judge = judge_metric(results)
    d = (control.get("vs_baseline") or {}).get(judge)
    if not d:
        return []
    text = f"Control `{control['name']}` (`{baseline}` {control['control']['how']}): {SHORT[judge]} {fmt_interval(d)} from `{baseline}`"
    if d["low"] <= 0 <= d["high"]:
        return [f"{text}, within noise: the intervals hold up against a rerun of the baseline.", ""]
    return [f"{WARN} {text}, beyond its interval: the intervals understate the noise (see its health warning).", ""]


def matched_kl_lines(frontier: dict[str, Any] | None) -> list[str]:
    """The Findings on the reward-KL frontier: each pair of families compared at matched KL, or why none could be."""
    if not frontier or len(frontier["families"]) < 2:
        return []
    judge = SHORT[frontier["judge"]]
    lines = ["### At matched KL", ""]
    lines.append(
        f"Each family's {judge} against KL to the reference, piecewise-linear between its points; differences at the same "
        f"KL with 95% paired prompt-bootstrap intervals ({frontier['bootstrap_samples']} resamples of "
        f"{frontier['num_prompts']} prompts)."
    )
    anchored = [f["family"] for f in frontier["families"] if f["anchored"]]
    if anchored and frontier.get("anchor"):
        lines[-1] += (
            f" Frontiers of {', '.join(f'`{a}`' for a in anchored)} start at `{frontier['anchor']['name']}` (KL 0): it is "
            "their starting model and KL reference, what infinite regularisation returns."
        )
    lines.append("")
    for m in frontier["matched_kl"]:
        worst = min(m["grid"], key=lambda g: abs(g["difference"]))
        where = f"at KL {m['kl_low']:.3g}" if m["at_point"] else f"over KL {m['kl_low']:.3g}–{m['kl_high']:.3g}"
        diffs = ", ".join(f"{g['difference']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}] at {g['kl']:.3g}" for g in m["grid"])
        verdict = {
            "above": f"`{m['a']}` lies above `{m['b']}`",
            "below": f"`{m['a']}` lies below `{m['b']}`",
            "neither": f"neither `{m['a']}` nor `{m['b']}` lies above the other beyond noise",
        }[m["verdict"]]
        lines.append(f"- {verdict} {where} ({judge} difference {diffs}; smallest {worst['difference']:+.3f}).")
    if frontier["not_comparable"]:
        pairs = "; ".join(f"`{a}` and `{b}`" for a, b in frontier["not_comparable"])
        lines.append(f"- No common KL range (no comparison at matched KL is possible): {pairs}.")
    return [*lines, ""]


def length_control_lines(results: list[dict[str, Any]], baseline: str | None) -> list[str]:
    """Raw against length-controlled win rates (AlpacaEval 2 style), each with its prompt-bootstrap interval."""
    rows = [r for r in results if r.get("lc_win_rate_vs_baseline") is not None and r["name"] != baseline]
    if not rows:
        return []
    lines = [
        "Length-controlled win rates:",
        "",
        f"Against `{baseline}`: the win rate a policy would have at the baseline's response length (a logistic fit of each "
        f"win on tanh(Δlength / sd) plus a per-prompt term, at Δlength = 0, C = {S.LC_C:g}); 95% prompt-bootstrap intervals.",
        "",
        "| policy | win rate | LC win rate | raw − LC |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lc = r["length_control"]
        lines.append(
            f"| {policy_label(r)} | {lc['raw']:.3f} [{lc['raw_low']:.3f}, {lc['raw_high']:.3f}] | "
            f"{r['lc_win_rate_vs_baseline']:.3f} [{r['lc_win_rate_vs_baseline_low']:.3f}, {r['lc_win_rate_vs_baseline_high']:.3f}] | "
            f"{lc['raw_minus_lc']:+.3f} [{lc['raw_minus_lc_low']:+.3f}, {lc['raw_minus_lc_high']:+.3f}] |"
        )
    return [*lines, ""]


# ----------------------------------------------------------------------------------------------
# Plots


def make_plots(
    comparison: Comparison, outcome: Outcome, rm: dict[str, Any] | None = None, frontier: dict[str, Any] | None = None
) -> dict[str, str]:
    """Title -> PNG file name in the output directory, for the plots the data supports."""
    import matplotlib

    matplotlib.use("Agg")
    plots: dict[str, str] = {}
    out = comparison.output_dir
    evaluated = [r for r in outcome.results if r["status"] == "ok"]
    baseline = next((r for r in evaluated if r["name"] == comparison.baseline_name), None)
    if evaluated:
        plots["Reward vs KL to the reference"] = frontier_plot(evaluated, baseline, out / "reward_vs_kl.png", frontier)
        if any(r.get("win_rate_vs_baseline") is not None for r in evaluated):
            plots["Win rate vs the baseline"] = win_rate_plot(evaluated, comparison.baseline_name, out / "win_rate.png")
        if any(r.get("vs_baseline") for r in evaluated):
            plots["Difference from the baseline"] = difference_plot(
                evaluated, comparison.baseline_name, out / "difference_vs_baseline.png"
            )
        plots["Response lengths"] = length_plot(comparison, outcome, out / "response_lengths.png")
    curves = best_of_n_curves(comparison, outcome)
    if curves:
        plots["Best-of-n expected reward (rejection sampling)"] = best_of_n_plot(curves, out / "best_of_n.png")
    if rm is not None:
        plots["Reward model margins"] = margins_plot(rm, out / "reward_margins.png")
    return plots


INTERVAL_LABEL = "95% interval, clustered by prompt"
LEGEND_RIGHT = {"fontsize": 8, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}  # outside: never over a bar


@contextlib.contextmanager
def figure(
    path: Path, size: tuple[float, float], title: str, xlabel: str = "", ylabel: str = "", title_size: float | None = None
) -> Iterator[Any]:
    """Every report plot: the axes to draw on; then its labels and title, a tight layout, the PNG at 110 dpi, closed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        if xlabel:
            ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.set_title(title, **({"fontsize": title_size} if title_size else {}))
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def difference_interval_label(results: list[dict[str, Any]]) -> str:
    """What the intervals of the paired differences are: clustered by prompt, or with the seed variance as well."""
    if interval_kinds(results) & {S.SEEDS_AND_PROMPTS, S.SEEDS}:
        return "95% interval with the seed-to-seed variance"
    return INTERVAL_LABEL


def _half_width(r: dict[str, Any], key: str) -> float:
    """Half-width of the 95% t interval of a mean from its clustered standard error."""
    se, k = r.get(f"{key}_stderr"), r.get("num_prompts")
    if not isinstance(se, (int, float)) or not k or k < 2 or _nan(se):
        return 0.0
    return S.t_quantile(int(k) - 1) * se


def frontier_plot(
    results: list[dict[str, Any]], baseline: dict[str, Any] | None, path: Path, frontier: dict[str, Any] | None = None
) -> str:
    """Judge reward vs KL, both with 95% clustered intervals, each sweep's points joined in order of KL (from the
    baseline at KL 0 when it is the policies' reference); names in the legend (labels on points overlap)."""
    key = judge_metric(results)
    title = f"{SHORT[key].capitalize()} vs KL (bars: {INTERVAL_LABEL})"
    with figure(path, (8, 5.2), title, "KL(policy ‖ reference), nats per response", SHORT[key], title_size=10) as ax:
        frontier_points(ax, results, baseline, key, frontier)
    return path.name


def frontier_points(
    ax: Any, results: list[dict[str, Any]], baseline: dict[str, Any] | None, key: str, frontier: dict[str, Any] | None = None
) -> None:
    """Each policy's mean with its intervals (and one faint dot per seed), one colour per family (a sweep's points
    share it, joined by a line), the baseline's level, the legend outside."""
    markers = "oDs^vP*Xhp"
    families = list(dict.fromkeys(r.get("family") or r["name"] for r in results))
    members: dict[str, int] = {}
    for r in results:
        if r.get(key) is None or r.get("kl_to_reference") is None:
            continue
        family = r.get("family") or r["name"]
        color = f"C{families.index(family) % 10}"
        marker = markers[members.setdefault(family, 0) % len(markers)]
        members[family] += 1
        points = [(s.get("kl_to_reference"), s.get(key)) for s in r["per_seed"] if s.get(key) is not None]
        if len(points) > 1:  # one faint dot per seed around the mean
            xs, ys = zip(*points)
            ax.scatter(xs, ys, alpha=0.35, color=color)
        ax.errorbar(
            [r["kl_to_reference"]],
            [r[key]],
            xerr=[_half_width(r, "kl_to_reference")],
            yerr=[_half_width(r, key)],
            fmt=marker,
            markersize=7,
            capsize=3,
            color=color,
            label=f"{policy_label(r)} ({r['method']})",
        )
    anchor = (frontier or {}).get("anchor")
    for fam in (frontier or {}).get("families", []):
        if len(fam["points"]) < 2 or fam["family"] not in families:
            continue
        start = [anchor] if fam["anchored"] and anchor else []
        xs, ys = zip(*[(p["kl"], p["reward"]) for p in [*start, *fam["points"]]])
        ax.plot(xs, ys, color=f"C{families.index(fam['family']) % 10}", linewidth=1.2, alpha=0.8, linestyle="-")
    if baseline is not None and baseline.get(key) is not None:
        ax.axhline(baseline[key], color="grey", linestyle="--", linewidth=1, label=f"baseline {baseline['name']}")
    ax.set_xlim(left=min(0.0, ax.get_xlim()[0]))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))


def win_rate_plot(results: list[dict[str, Any]], baseline: str | None, path: Path) -> str:
    """Horizontal bars: win rate vs the baseline with 95% clustered intervals; 0.5 = a tie."""
    rows = [r for r in results if r.get("win_rate_vs_baseline") is not None and r["name"] != baseline]  # 0.5 by construction
    with figure(path, (9, 0.6 * len(rows) + 2.0), "Win rate vs the baseline", f"win rate vs {baseline} (ties half)") as ax:
        ys = list(range(len(rows)))[::-1]
        rates = [r["win_rate_vs_baseline"] for r in rows]
        halves = [_half_width(r, "win_rate_vs_baseline") for r in rows]
        errors = [
            [min(h, x) for x, h in zip(rates, halves)],
            [min(h, 1.0 - x) for x, h in zip(rates, halves)],
        ]  # a rate stays in [0, 1]
        ax.barh(ys, rates, height=0.5, xerr=errors, capsize=5, color="#4c72b0", label=f"win rate ({INTERVAL_LABEL})")
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1, label=f"tie with {baseline}")
        ax.set_yticks(ys, [policy_label(r) for r in rows])
        ax.set_xlim(0, 1)
        ax.legend(**LEGEND_RIGHT)
    return path.name


def difference_plot(results: list[dict[str, Any]], baseline: str | None, path: Path) -> str:
    """Paired difference of the judge metric from the baseline, with its 95% interval, and the zero line."""
    key = judge_metric(results)
    rows = [r for r in results if (r.get("vs_baseline") or {}).get(key)]
    title = f"{SHORT[key].capitalize()}: difference from the baseline"
    xlabel = f"Δ {SHORT[key]} vs {baseline}, paired by prompt and sample ({difference_interval_label(rows)})"
    with figure(path, (9, 0.6 * len(rows) + 2.0), title, xlabel) as ax:
        ys = list(range(len(rows)))[::-1]
        for y, r in zip(ys, rows):
            d = r["vs_baseline"][key]
            color = "C2" if d["low"] > 0 else "C3" if d["high"] < 0 else "C7"
            ax.errorbar(
                [d["difference"]],
                [y],
                xerr=[[d["difference"] - d["low"]], [d["high"] - d["difference"]]],
                fmt="o",
                capsize=5,
                color=color,
            )
        ax.axvline(0.0, color="grey", linestyle="--", linewidth=1, label=f"no difference from {baseline}")
        for color, text in (("C2", "better (interval above 0)"), ("C7", "within noise"), ("C3", "worse (interval below 0)")):
            ax.errorbar([], [], xerr=[], fmt="o", color=color, label=text)
        ax.set_yticks(ys, [policy_label(r) for r in rows])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.legend(**LEGEND_RIGHT)
    return path.name


def length_plot(comparison: Comparison, outcome: Outcome, path: Path) -> str:
    from matplotlib.lines import Line2D

    with figure(path, (7, 4.2), "Response length distribution", ylabel="response length (tokens)") as ax:
        data, labels = [], []
        for r in outcome.results:
            if r["status"] != "ok":
                continue
            data.append([row["num_tokens"] for row in samples_of(comparison, outcome.runs, r["name"])])
            finished = r.get("finished_share")
            labels.append(f"{policy_label(r)}\n{finished:.0%} finished" if finished is not None else r["name"])
        ax.boxplot(
            data, tick_labels=labels, showmeans=True, meanprops={"marker": "^", "markerfacecolor": "C2", "markeredgecolor": "C2"}
        )
        cap = comparison.eval.generation.max_new_tokens
        ax.axhline(cap, color="C3", linestyle=":", linewidth=1)
        ax.set_ylim(0, cap * 1.1)
        handles = [
            Line2D([], [], color="C1", label="median"),
            Line2D([], [], marker="^", color="C2", linestyle="", label="mean"),
            Line2D([], [], color="black", label="box: 25-75%, whiskers: 1.5 IQR"),
            Line2D([], [], color="C3", linestyle=":", label=f"cap ({cap} new tokens)"),
        ]
        ax.legend(handles=handles, fontsize=8, loc="lower left")
        ax.tick_params(axis="x", labelsize=8)
    return path.name


def margins_plot(rm: dict[str, Any], path: Path) -> str:
    title = f"Reward model margins (accuracy {rm['accuracy']:.3f}, length-only rule {rm['length_baseline_accuracy']:.3f})"
    with figure(path, (7, 3.8), title, "score(chosen) − score(rejected)", "pairs", title_size=10) as ax:
        seeds = rm.get("num_seeds", 1)
        label = f"{rm['num_pairs']} held-out pairs" + (f" × {seeds} seeds' models" if seeds > 1 else "")
        ax.hist(rm["margins"], bins=30, color="#4c72b0", label=label)
        ax.axvline(0.0, color="C3", linestyle="--", linewidth=1, label="0: left of it the pair is ranked wrong")
        ax.legend(fontsize=8)
    return path.name


def best_of_n_curves(comparison: Comparison, outcome: Outcome) -> dict[str, dict[int, float]]:
    """Per rejection-sampling stage (first seed that has it): n -> expected best-of-n reward, from its metrics.jsonl."""
    curves: dict[str, dict[int, float]] = {}
    for name in comparison.stages:
        for seed in comparison.seeds:
            run = outcome.runs[seed].get(name)
            if run is None or not run.ok or run.method not in BEST_OF_N_METHODS:
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
    title = "Best-of-n curve (rejection sampling's reward source)"
    with figure(path, (6, 4), title, "n (samples per prompt)", "expected best-of-n reward") as ax:
        ns: set[int] = set()
        for name, curve in curves.items():
            ax.plot(list(curve), list(curve.values()), marker="o", label=name)
            ns |= set(curve)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ns), [str(n) for n in sorted(ns)])  # integers, not 2^k
        ax.minorticks_off()
        ax.legend()
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
    rows = [[csv_row(r, columns)["health"] if k == "health" else r.get(k) for k in columns] for r in outcome.results]
    run.log({"results": wandb.Table(columns=columns, data=rows)})
    for title, name in plots.items():
        run.log({f"plots/{Path(name).stem}": wandb.Image(str(comparison.output_dir / name), caption=title)})
    run.summary.update({f"{r['name']}/{k}": r[k] for r in outcome.results for k in QUALITY_METRICS if r.get(k) is not None})
    run.finish()
    (comparison.output_dir / "wandb_summary_run.txt").write_text(f"{run.id}\n", encoding="utf-8")
