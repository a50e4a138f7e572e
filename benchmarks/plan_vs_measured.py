"""How good is `workbench plan`? Short real DPO and PPO runs, then the manifest's planned peak
(`cost.planned_peak_memory_mb`) beside the measured one (`cost.peak_memory_mb`) as a ratio.

On a GPU the measured peak is `torch.cuda.max_memory_allocated` and the ratio is the plan's accuracy
(goal: within 10%). On a CPU it is the process's peak RSS (interpreter, libraries and all), printed
for completeness only: not comparable, and said so.

  python benchmarks/plan_vs_measured.py --model DIR [--accelerate-config accelerate_configs/single_gpu.yaml] [--max-length 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def recipe(method: str, model: str, out: Path, max_length: int, steps: int, micro: int) -> dict:
    common = {
        "model": {"name_or_path": model},
        "data": {"sources": [{"synthetic": {"task": "vowels", "num_pairs": 256}}], "eval_split": 0.0, "max_length": max_length},
        "tracking": {"mode": "disabled"},
        "output_dir": str(out / method),
        "seed": 0,
    }
    if method == "dpo":
        train = {"max_steps": steps, "per_device_train_batch_size": micro, "save_steps": 1000, "logging_steps": 1}
        return {"method": "dpo", **common, "train": train}
    return {
        "method": "ppo",
        **common,
        "reward_model": {"function": "workbench.data.synthetic:vowel_reward"},
        "generation": {"max_new_tokens": max_length // 2, "batch_size": micro},
        "train": {"max_steps": steps, "per_device_train_batch_size": micro, "ppo_epochs": 1, "save_steps": 0},
    }


def run(method: str, args: argparse.Namespace, tmp: Path) -> dict:
    path = tmp / f"{method}.yaml"
    path.write_text(yaml.safe_dump(recipe(method, args.model, tmp, args.max_length, args.steps, args.micro)))
    cmd = [sys.executable, "-m", "workbench"]
    cmd += (
        ["launch", str(path), "--accelerate-config", args.accelerate_config, "--force"]
        if args.accelerate_config
        else ["train", str(path)]
    )
    subprocess.run(cmd, cwd=REPO, check=True)
    return json.loads((tmp / method / "manifest.json").read_text())["cost"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: a tiny model built here)")
    parser.add_argument("--accelerate-config", default=None)
    parser.add_argument("--methods", nargs="+", default=["dpo", "ppo"])
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.model is None:
            from workbench.tiny import build_tiny_model

            args.model = str(build_tiny_model(tmp / "tiny"))
        rows = []
        for method in args.methods:
            cost = run(method, args, tmp)
            planned, measured = cost.get("planned_peak_memory_mb"), cost["peak_memory_mb"]
            rows.append((method, planned, measured, cost["peak_memory_kind"]))
    print(f"{'method':<8} {'planned MiB':>12} {'measured MiB':>13} {'planned/measured':>17}  measured as")
    for method, planned, measured, kind in rows:
        ratio = f"{planned / measured:.3f}" if planned and measured else "n/a"
        if kind != "cuda_max_allocated":
            ratio += " (CPU RSS: not comparable)"
        print(f"{method:<8} {planned or 0:>12.1f} {measured:>13.1f} {ratio:>17}  {kind}")


if __name__ == "__main__":
    main()
