"""Tokens/s of the workbench DPO recipe vs a plain TRL DPOTrainer script, side by side.

Same tiny model, same pairs (written once as JSONL for the baseline), same batch size, steps,
max length and precision. Runs alternate (ours, baseline, ours, ...) so machine noise hits
both; each run is a fresh process. Throughput = TRL's own `num_tokens / train_runtime` on both
sides (training loop only; process start-up and data preparation are reported separately).

  python benchmarks/dpo_throughput.py --data hh --reps 3
  python benchmarks/dpo_throughput.py --data synthetic --group-by-length
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


def write_pairs(kind: str, out: Path, n: int) -> Path:
    """The same text pairs for both sides: synthetic, or hh-rlhf flattened to text prompts."""
    from workbench.config import DataConfig, SourceConfig, SyntheticSpec
    from workbench.data.pipeline import prepare

    if kind == "hh":
        src = SourceConfig(path=str(HH), format="hh-rlhf")
    else:
        src = SourceConfig(synthetic=SyntheticSpec(num_pairs=n, seed=0))
    prepared = prepare(DataConfig(sources=[src], on_invalid="drop", eval_split=0.0), seed=0)

    def text(value: object) -> str:
        return value if isinstance(value, str) else "\n".join(f"{m['role']}: {m['content']}" for m in value)  # type: ignore[index]

    path = out / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for row in prepared.train[:n]:
            fh.write(
                json.dumps(
                    {
                        "prompt": text(row["prompt"]) + "\nassistant: ",
                        "chosen": text(row["chosen"]),
                        "rejected": text(row["rejected"]),
                    }
                )
                + "\n"
            )
    return path


def run_ours(model: Path, data: Path, out: Path, a: argparse.Namespace) -> dict:
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {
            "sources": [{"path": str(data), "format": "preference"}],
            "eval_split": 0.0,
            "max_length": a.max_length,
            "max_prompt_length": a.max_length // 2,
        },
        "train": {
            "per_device_train_batch_size": a.batch,
            "max_steps": a.steps,
            "learning_rate": 1e-4,
            "gradient_checkpointing": False,
            "logging_steps": a.steps,
            "save_strategy": "no",
            **({"train_sampling_strategy": "group_by_length"} if a.group_by_length else {}),
        },
        "tracking": {"mode": "disabled"},
        "output_dir": str(out),
        "seed": 0,
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "workbench", "train", str(path)], check=True, capture_output=True, cwd=REPO)
    wall = time.time() - t0
    final = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        final.update(json.loads(line))
    return {"train_runtime": final["train/summary/runtime"], "num_tokens": final["train/num_tokens"], "wall": wall}


def run_baseline(model: Path, data: Path, out: Path, a: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "trl_dpo_baseline.py"),
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    cmd += ["--batch", str(a.batch), "--max-length", str(a.max_length), "--steps", str(a.steps)]
    t0 = time.time()
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    wall = time.time() - t0
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["synthetic", "hh"], default="hh")
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--group-by-length", action="store_true", help="our side uses train_sampling_strategy: group_by_length")
    a = p.parse_args()
    from workbench.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_tiny_model(tmp / "model")
        data = write_pairs(a.data, tmp, a.pairs)
        rows = {"ours": [], "trl": []}
        for rep in range(a.reps):
            rows["ours"].append(run_ours(model, data, tmp / f"ours{rep}", a))
            rows["trl"].append(run_baseline(model, data, tmp / f"trl{rep}", a))
            print(
                f"rep {rep}: ours {rows['ours'][-1]['num_tokens'] / rows['ours'][-1]['train_runtime']:.0f} tok/s, "
                f"trl {rows['trl'][-1]['num_tokens'] / rows['trl'][-1]['train_runtime']:.0f} tok/s",
                flush=True,
            )
    tps = {k: [r["num_tokens"] / r["train_runtime"] for r in v] for k, v in rows.items()}
    ratios = [o / t for o, t in zip(tps["ours"], tps["trl"])]
    print(
        f"data={a.data} pairs={a.pairs} batch={a.batch} steps={a.steps} max_length={a.max_length} group_by_length={a.group_by_length}"
    )
    for k in ("ours", "trl"):
        print(
            f"{k:5s} tokens/s: mean {statistics.fmean(tps[k]):.0f} (runs {', '.join(f'{x:.0f}' for x in tps[k])}); "
            f"tokens trained {rows[k][0]['num_tokens']:.0f}; wall per run {statistics.fmean(r['wall'] for r in rows[k]):.1f}s"
        )
    spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    print(
        f"ratio ours/trl tokens/s: {statistics.fmean(ratios):.3f} +- {spread:.3f} (per rep: {', '.join(f'{r:.3f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
