"""DPO on the real model (SmolLM2-135M-Instruct, fp32, CPU or GPU): the workbench recipe vs a plain TRL
DPOTrainer script, with and without gradient checkpointing and LoRA, side by side.

Both sides read the same conversational hh-rlhf pairs (TRL applies the same chat template), with the same
batch size, steps, max length and precision; every run is a fresh process, and runs alternate
(ours, trl, ours, trl, ... per setting) so a busy machine slows both. Reported per setting: s/step and
tokens/s from TRL's own counters (train_runtime, num_tokens), peak RSS of the process, and the
ours/trl ratios with their spread over repetitions.

  workbench fetch-model smollm2-135m runs/smollm2-135m     # once (needs .[real-model])
  python benchmarks/real_model_dpo.py --model runs/smollm2-135m --reps 2 --steps 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
SETTINGS = {  # name: (lora, gradient_checkpointing)
    "full": (False, False),
    "full+gc": (False, True),
    "lora": (True, False),
    "lora+gc": (True, True),
}
# Runs a command and prints its peak RSS (this wrapper's only child), the same measure on both sides.
RSS_WRAPPER = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
)


def write_pairs(out: Path, n: int) -> Path:
    """hh-rlhf pairs in conversational form (prompt messages, one assistant message per response)."""
    from workbench.config import DataConfig, SourceConfig
    from workbench.data.pipeline import prepare

    prepared = prepare(
        DataConfig(sources=[SourceConfig(path=str(HH), format="hh-rlhf")], on_invalid="drop", eval_split=0.0), seed=0
    )
    path = out / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for row in prepared.train[:n]:
            fh.write(json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
    return path


def measured(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, wall seconds, peak RSS in MB) of one fresh process."""
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True, cwd=REPO)
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{res.stderr[-3000:]}")
    kb = next(int(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return res, wall, kb / 1024


def run_ours(model: Path, data: Path, out: Path, a: argparse.Namespace, lora: bool, gc: bool) -> dict:
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": str(model), "dtype": "float32", **({"lora": {}} if lora else {})},
        "data": {
            "sources": [{"path": str(data), "format": "conversational"}],
            "eval_split": 0.0,
            "max_length": a.max_length,
            "max_prompt_length": a.max_length // 2,
        },
        "train": {
            "per_device_train_batch_size": a.batch,
            "max_steps": a.steps,
            "learning_rate": 1e-4,
            "gradient_checkpointing": gc,
            "logging_steps": a.steps,
            "save_strategy": "no",
            "eval_strategy": "no",
        },
        "tracking": {"mode": "disabled"},
        "output_dir": str(out),
        "seed": 0,
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    _, wall, rss = measured([sys.executable, "-m", "workbench", "train", str(path)])
    final: dict = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        final.update(json.loads(line))
    return {"train_runtime": final["train/summary/runtime"], "num_tokens": final["train/num_tokens"], "wall": wall, "rss_mb": rss}


def run_trl(model: Path, data: Path, out: Path, a: argparse.Namespace, lora: bool, gc: bool) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "trl_dpo_baseline.py"), "--model", str(model), "--data", str(data)]
    cmd += ["--out", str(out), "--batch", str(a.batch), "--max-length", str(a.max_length), "--steps", str(a.steps)]
    cmd += (["--lora"] if lora else []) + (["--gradient-checkpointing"] if gc else [])
    res, wall, rss = measured(cmd)
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "wall": wall, "rss_mb": rss}


def summary(name: str, rows: list[dict], steps: int) -> str:
    sps = [r["train_runtime"] / steps for r in rows]
    tps = [r["num_tokens"] / r["train_runtime"] for r in rows]
    return (
        f"{name:<14} s/step {statistics.fmean(sps):6.2f} (runs {', '.join(f'{x:.2f}' for x in sps)})  "
        f"tokens/s {statistics.fmean(tps):7.1f}  peak RSS {max(r['rss_mb'] for r in rows):7.0f} MB  "
        f"tokens {rows[0]['num_tokens']:.0f}  wall {statistics.fmean(r['wall'] for r in rows):.0f}s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="output of `workbench fetch-model smollm2-135m DIR`")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = write_pairs(tmp, a.pairs)
        rows: dict[tuple[str, str], list[dict]] = {}
        for rep in range(a.reps):
            for setting in a.settings:
                lora, gc = SETTINGS[setting]
                for side, fn in (("ours", run_ours), ("trl", run_trl)):
                    r = fn(Path(a.model), data, tmp / f"{side}-{setting}-{rep}", a, lora, gc)
                    rows.setdefault((side, setting), []).append(r)
                    print(
                        f"rep {rep} {side:<4} {setting:<8} {r['train_runtime'] / a.steps:.2f} s/step, {r['rss_mb']:.0f} MB",
                        flush=True,
                    )
    print(f"\nSmolLM2-135M-Instruct fp32, batch {a.batch}, steps {a.steps}, max_length {a.max_length}, reps {a.reps}")
    for setting in a.settings:
        for side in ("ours", "trl"):
            print(summary(f"{side} {setting}", rows[(side, setting)], a.steps))
        ratios = [
            (o["num_tokens"] / o["train_runtime"]) / (t["num_tokens"] / t["train_runtime"])
            for o, t in zip(rows[("ours", setting)], rows[("trl", setting)])
        ]
        spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        rss = max(r["rss_mb"] for r in rows[("ours", setting)]) / max(r["rss_mb"] for r in rows[("trl", setting)])
        print(f"{'':<14} ours/trl tokens/s {statistics.fmean(ratios):.3f} +- {spread:.3f}; peak RSS ours/trl {rss:.2f}")


if __name__ == "__main__":
    main()
