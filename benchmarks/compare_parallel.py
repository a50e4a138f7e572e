"""Does `compare --max-parallel 2` finish the quickstart sooner than one stage at a time, with the same results?

Runs `workbench compare recipes/quickstart.yaml` on the tiny offline model, sequentially and with
`--max-parallel N`, alternating, each into a fresh output directory (nothing cached). Recorded: each run's
wall time, the machine's load average before it, and whether every policy's results.json metrics equal the
sequential run's (same seeds; the parallel stages get fewer torch threads each, so float sums may differ in
their last bits: the largest relative difference is recorded too).

    python benchmarks/compare_parallel.py --repeats 1 --save benchmarks/results/compare_parallel.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("gold_reward_mean", "reward_mean", "win_rate_vs_baseline", "kl_to_reference", "preference_accuracy")


def compare(model: Path, out: Path, parallel: int) -> float:
    cmd = [sys.executable, "-m", "workbench", "compare", "recipes/quickstart.yaml"]
    cmd += ["--set", f"base.model.name_or_path={model}", "--set", f"output_dir={out}", "--set", "base.tracking.mode=disabled"]
    cmd += ["--max-parallel", str(parallel)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"compare failed ({out}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return seconds


def metrics(out: Path) -> dict[str, dict[str, float]]:
    rows = json.loads((out / "results.json").read_text())
    return {r["name"]: {k: r.get(k) for k in METRICS} for r in rows}


def largest_difference(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    """The largest relative difference of one metric of one policy between two runs (0.0: identical)."""
    worst = 0.0
    for name, row in a.items():
        for k, v in row.items():
            w = b[name][k]
            if v is None or w is None:
                worst = worst if v == w else float("inf")
            elif v != w:
                worst = max(worst, abs(v - w) / max(abs(v), abs(w), 1e-12))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--save", default=None)
    a = p.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        subprocess.run([sys.executable, "-m", "workbench", "tiny-model", str(model)], cwd=REPO, check=True, capture_output=True)
        for i in range(a.repeats):
            for parallel in (1, a.parallel):
                out = Path(tmp) / f"run-{i}-p{parallel}"
                load = os.getloadavg()[0]
                seconds = compare(model, out, parallel)
                runs.append({"max_parallel": parallel, "seconds": round(seconds, 1), "load_before": round(load, 2), "out": out})
                print(f"max_parallel {parallel}: {seconds:.1f} s (1-min load average before: {load:.2f})", flush=True)
        reference = metrics(runs[0]["out"])
        for r in runs:
            got = metrics(r.pop("out"))
            r["identical_metrics"] = got == reference
            r["largest_relative_difference"] = largest_difference(reference, got)
    summary = {
        "command": "python " + " ".join(sys.argv),
        "cores": len(os.sched_getaffinity(0)),
        "runs": runs,
    }
    print(json.dumps(summary, indent=2))
    if a.save:
        Path(a.save).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
