"""The reward-model baseline: a plain TRL RewardTrainer script, as a user would write it from TRL's docs.

Reads (prompt, chosen, rejected) JSONL, trains a one-label sequence classifier, prints one JSON line
with TRL's own train_runtime and num_tokens and the logged loss of every step.
"""

from __future__ import annotations

import argparse
import json

from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    dataset = load_dataset("json", data_files=a.data, split="train")
    args = RewardConfig(
        output_dir=a.out,
        per_device_train_batch_size=a.batch,
        max_length=a.max_length,
        max_steps=a.steps,
        learning_rate=1e-4,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=a.seed,
        disable_tqdm=True,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(json.dumps({"train_runtime": logs["train_runtime"], "num_tokens": logs["num_tokens"], "losses": losses}))


if __name__ == "__main__":
    main()
