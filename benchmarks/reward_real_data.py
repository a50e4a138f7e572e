"""Reward model on real data: train on hh-rlhf helpful-base (held-out split by the data layer),
report held-out accuracy against the length baseline, then score LLMBar (never trained on), where
length cues are built to point the wrong way.

  python benchmarks/reward_real_data.py --epochs 1 --model runs/tiny-model
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
SHARED = REPO.parent / "shared" / "data"
LLMBAR = ["Natural", "Adversarial/Neighbor", "Adversarial/GPTInst", "Adversarial/GPTOut", "Adversarial/Manual"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="backbone (default: a fresh tiny model)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    from workbench.config import DataConfig, LabelSpec, ModelConfig, SourceConfig
    from workbench.data.pipeline import prepare
    from workbench.methods.reward import pair_scores
    from workbench.metrics import length_baseline_accuracy, pairwise_accuracy
    from workbench.models import load_reward_model, load_tokenizer
    from workbench.tiny import build_tiny_model

    tmp = Path(a.out or tempfile.mkdtemp())
    model = a.model or str(build_tiny_model(tmp / "tiny"))
    recipe = {
        "method": "reward",
        "model": {"name_or_path": model, "dtype": "float32"},
        "data": {
            "sources": [{"path": str(SHARED / "hh-rlhf/helpful-base/test.jsonl.gz"), "format": "hh-rlhf"}],
            "on_invalid": "drop",
            "eval_split": 0.1,
            "max_length": a.max_length,
        },
        "train": {
            "learning_rate": 5e-4,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 32,
            "num_train_epochs": a.epochs,
            "logging_steps": 20,
            "save_strategy": "no",
            "gradient_checkpointing": False,
        },
        "tracking": {"mode": "disabled"},
        "output_dir": str(tmp / "rm"),
        "seed": 0,
    }
    (tmp / "rm.yaml").write_text(yaml.safe_dump(recipe))
    subprocess.run([sys.executable, "-m", "workbench", "train", str(tmp / "rm.yaml")], check=True, cwd=REPO)
    final = {}
    for line in (tmp / "rm" / "metrics.jsonl").read_text().splitlines():
        final.update(json.loads(line))
    print(
        f"hh-rlhf held-out: accuracy {final['eval/accuracy']:.3f} vs length baseline {final['eval/length_baseline_accuracy']:.3f}"
    )

    cfg = ModelConfig(name_or_path=str(tmp / "rm" / "model"))
    tokenizer = load_tokenizer(cfg)
    rm = load_reward_model(cfg, tokenizer)
    for subset in LLMBAR:
        src = SourceConfig(path=str(SHARED / "llmbar" / subset / "dataset.json"), format="labeled-pair", label=LabelSpec())
        prepared = prepare(DataConfig(sources=[src], eval_split=0.0, max_length=a.max_length), seed=0, tokenizer=tokenizer)
        pairs = prepared.tokenized["train"]
        chosen, rejected = pair_scores(rm, pairs, tokenizer.pad_token_id, 32)
        base = length_baseline_accuracy([len(x.chosen_ids) for x in pairs], [len(x.rejected_ids) for x in pairs])
        print(
            f"LLMBar {subset:22s} ({len(pairs):3d} pairs): accuracy {pairwise_accuracy(chosen, rejected):.3f} vs length baseline {base:.3f}"
        )


if __name__ == "__main__":
    main()
