"""CPU cost of DPO training steps on real HH-RLHF pairs: padded vs packed, random vs length-grouped
batches, in one process, alternating, timed in process CPU seconds (steady on a shared machine).

Each variant runs the same trainer code a `workbench train` run uses (PretokenizedDPOTrainer: policy
forward + backward, reference forward, TRL's loss and metrics) over the `--batches` batches its
sampler gives after one warm-up batch, from the same pairs; the optimizer step is left out (the same for every variant).
"random + padded" is what plain TRL does. Tokens = real (non-padding) tokens, so tokens per CPU-second
compare directly across variants whose batches differ.

`--method reward` measures reward-model training the same way (LengthGroupedRewardTrainer: backbone
forward + backward, TRL's pairwise loss).

  python benchmarks/dpo_step_cost.py --hidden 256 --layers 4 --batches 16 --reps 2 --save benchmarks/results/dpo_step_cost.json
  python benchmarks/dpo_step_cost.py --method reward --batches 16 --reps 2 --save benchmarks/results/reward_step_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_throughput import write_pairs  # noqa: E402

VARIANTS = {
    "random_padded": ("random", False),
    "random_packed": ("random", True),
    "grouped_padded": ("group_by_length", False),
    "grouped_packed": ("group_by_length", True),
}


def trainer_for(model_dir: Path, pairs: list, out: Path, strategy: str, packing: bool, a: argparse.Namespace):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.methods.dpo import PretokenizedDPOTrainer, token_dataset
    from workbench.train_configs import DPOTrainConfig

    fields = dict(
        output_dir=str(out),
        per_device_train_batch_size=a.batch,
        max_length=a.max_length,
        report_to=[],
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        train_sampling_strategy=strategy,
        packing=packing,
        seed=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if a.method == "reward":
        import torch

        from workbench.config import ModelConfig
        from workbench.methods.reward import LengthGroupedRewardTrainer, reward_dataset
        from workbench.models import load_reward_model
        from workbench.train_configs import RewardTrainConfig

        rm_args = RewardTrainConfig(**fields)
        torch.manual_seed(0)
        model = load_reward_model(ModelConfig(name_or_path=str(model_dir), dtype="float32"), tokenizer)
        return LengthGroupedRewardTrainer(
            model=model, args=rm_args, train_dataset=reward_dataset(pairs, None), processing_class=tokenizer
        )
    policy = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    data: Dataset = token_dataset(pairs)
    return PretokenizedDPOTrainer(
        model=policy, ref_model=ref, args=DPOTrainConfig(**fields), train_dataset=data, processing_class=tokenizer
    )


def measure(trainer, batches: int) -> dict:
    cpu = tokens = slots = 0
    trainer.model.train()
    for k, batch in enumerate(trainer.get_train_dataloader()):
        if k == batches + 1:
            break
        t0 = time.process_time()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        trainer.model.zero_grad(set_to_none=True)
        if k == 0:  # warm-up batch, not counted
            continue
        cpu += time.process_time() - t0
        tokens += int(batch["attention_mask"].sum())
        slots += batch["attention_mask"].numel()
    return {"cpu_s": cpu, "tokens": tokens, "padded_slots": slots, "tokens_per_cpu_s": tokens / cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--method", choices=["dpo", "reward"], default="dpo")
    p.add_argument("--save", type=Path)
    a = p.parse_args()
    import torch

    from workbench.config import DataConfig, ModelConfig, SourceConfig
    from workbench.data.pipeline import prepare
    from workbench.models import load_tokenizer
    from workbench.tiny import build_tiny_model

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_tiny_model(tmp / "model", hidden_size=a.hidden, num_layers=a.layers)
        data, lengths = write_pairs(tmp, a.pairs, model, a.max_length)
        tok = load_tokenizer(ModelConfig(name_or_path=str(model)))
        cfg = DataConfig(sources=[SourceConfig(path=str(data), format="preference")], eval_split=0.0, max_length=a.max_length)
        pairs = prepare(cfg, seed=0, tokenizer=tok).tokenized["train"]
        print(f"pairs: {lengths}", flush=True)
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for rep in range(a.reps):
            names = list(VARIANTS)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                strategy, packing = VARIANTS[name]
                trainer = trainer_for(model, pairs, tmp / f"{name}{rep}", strategy, packing, a)
                runs[name].append(measure(trainer, a.batches))
                r = runs[name][-1]
                print(
                    f"rep {rep} {name}: {r['tokens_per_cpu_s']:.0f} tokens/CPU-s ({r['tokens']} tokens, {r['padded_slots']} padded slots)",
                    flush=True,
                )
    base = runs["random_padded"]
    lines = [
        "| variant | tokens per CPU-s | x random+padded (plain TRL batching) | real tokens / padded slots |",
        "|---|---|---|---|",
    ]
    summary = {}
    for name, rs in runs.items():
        tps = [r["tokens_per_cpu_s"] for r in rs]
        ratios = [r["tokens_per_cpu_s"] / b["tokens_per_cpu_s"] for r, b in zip(rs, base)]
        sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        summary[name] = {"tokens_per_cpu_s": tps, "ratio": ratios}
        lines.append(
            f"| {name} | {statistics.fmean(tps):.0f} | {statistics.fmean(ratios):.2f} ± {sd:.2f} | {rs[0]['tokens']}/{rs[0]['padded_slots']} |"
        )
    settings = {k: v for k, v in vars(a).items() if k != "save"}
    print(f"settings: {settings}; model: Llama hidden {a.hidden}, {a.layers} layers, fp32, sdpa; data: {lengths}")
    print("\n".join(lines))
    if a.save:
        a.save.parent.mkdir(parents=True, exist_ok=True)
        a.save.write_text(json.dumps({"settings": settings, "lengths": lengths, "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
