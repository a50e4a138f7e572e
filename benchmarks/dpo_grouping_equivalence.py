"""Does length-grouped sampling (the DPO / reward default) train as well as random batches?

Length grouping changes which pairs share a batch, so its loss curve cannot equal random order's
step for step; the question is whether it ends in the same place. Same locally built random Llama,
the same real HH-RLHF pairs as `dpo_throughput.py` (those that fit `--max-length` untruncated), a
held-out split by prompt, and for each seed one run with `train_sampling_strategy: random` and one
with `group_by_length` (runs alternate). Compared at the end on the held-out pairs: DPO loss,
reward accuracy and margin. Printed: each variant's mean ± sd over seeds, and the paired difference
(grouped - random, same seed) with its 95% Student-t interval.

    python benchmarks/dpo_grouping_equivalence.py --seeds 0 1 2 3 --steps 40 --save benchmarks/results/dpo_grouping_equivalence.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from dpo_throughput import THREADS, write_pairs  # noqa: E402

METRICS = ("eval/loss", "eval/rewards/accuracies", "eval/rewards/margins")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def run(model: Path, data: Path, out: Path, a: argparse.Namespace, strategy: str, seed: int) -> dict[str, float]:
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {
            "sources": [{"path": str(data), "format": "preference"}],
            "eval_split": 0.2,
            "split_by": "prompt",
            "max_length": a.max_length,
            "max_prompt_length": a.max_length // 2,
            "seed": 0,
        },
        "train": {
            "per_device_train_batch_size": a.batch,
            "per_device_eval_batch_size": a.batch,
            "max_steps": a.steps,
            "learning_rate": a.lr,
            "gradient_checkpointing": False,
            "logging_steps": 5,
            "eval_strategy": "steps",
            "eval_steps": a.steps,
            "save_strategy": "no",
            "train_sampling_strategy": strategy,
        },
        "tracking": {"mode": "disabled"},
        "output_dir": str(out),
        "seed": seed,
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    subprocess.run(
        [sys.executable, "-m", "workbench", "train", str(path)],
        check=True,
        capture_output=True,
        cwd=REPO,
        env={**os.environ, **THREADS},
    )
    final: dict[str, float] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        final.update({k: v for k, v in json.loads(line).items() if k in METRICS})
    return final


def interval(diffs: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    half = T_975.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--pairs", type=int, default=320)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--save")
    a = parser.parse_args()

    from workbench.tiny import build_tiny_model

    results: dict[str, list[dict[str, float]]] = {"random": [], "group_by_length": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model", seed=0, hidden_size=a.hidden, num_layers=a.layers)
        data, lengths = write_pairs(root, a.pairs, model, a.max_length)
        print(f"{lengths['pairs']} HH-RLHF pairs, tokens min {lengths['min']} median {lengths['median']} max {lengths['max']}")
        for seed in a.seeds:
            order = ["random", "group_by_length"] if seed % 2 == 0 else ["group_by_length", "random"]
            for strategy in order:
                results[strategy].append(run(model, data, root / f"{strategy}-{seed}", a, strategy, seed))
                print(
                    f"seed {seed} {strategy}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[strategy][-1].items()), flush=True
                )
    n = len(a.seeds)
    print(f"\n{'held-out metric':<26} {'random (n=' + str(n) + ')':>18} {'grouped':>18} {'grouped - random [95% CI]':>34}")
    summary = {}
    for metric in METRICS:
        r = [x[metric] for x in results["random"]]
        g = [x[metric] for x in results["group_by_length"]]
        mean, lo, hi = interval([b - c for b, c in zip(g, r)])
        sd = statistics.stdev if n > 1 else (lambda v: math.nan)
        summary[metric] = {"random": r, "grouped": g, "diff_mean": mean, "diff_ci": [lo, hi]}
        print(
            f"{metric:<26} {statistics.fmean(r):9.4f} ± {sd(r):6.4f} {statistics.fmean(g):9.4f} ± {sd(g):6.4f}"
            f"   {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        )
    if a.save:
        Path(a.save).write_text(json.dumps({"settings": vars(a), "lengths": lengths, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
