"""The baseline: a plain TRL DPOTrainer script, as a user would write it from TRL's docs.

Reads (prompt, chosen, rejected) JSONL, trains, prints one JSON line with TRL's own
train_runtime and num_tokens (the same counters on both sides) and the logged loss of every step.
`--lora` and `--gradient-checkpointing` are the plain peft / TrainingArguments switches.
"""

from __future__ import annotations

import argparse
import json

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="random", help="TrainingArguments.train_sampling_strategy")
    p.add_argument("--lora", action="store_true", help="LoRA r=16 on all linear layers (peft)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    a = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    dataset = load_dataset("json", data_files=a.data, split="train")
    args = DPOConfig(
        output_dir=a.out,
        per_device_train_batch_size=a.batch,
        max_length=a.max_length,
        max_steps=a.steps,
        learning_rate=1e-4,
        bf16=False,
        gradient_checkpointing=a.gradient_checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=a.seed,
        train_sampling_strategy=a.sampler,
        disable_tqdm=True,
    )
    peft_config = None
    if a.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(json.dumps({"train_runtime": logs["train_runtime"], "num_tokens": logs["num_tokens"], "losses": losses}))


if __name__ == "__main__":
    main()
