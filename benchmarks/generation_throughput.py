"""Generation tokens/s: the shared batched path (length-sorted batches, left padding, KV cache)
vs a naive loop calling `generate` once per prompt, on the same tiny model, prompts and settings.

Both sample num_samples completions per prompt with the same max_new_tokens; throughput counts
the new tokens each actually produced (up to and including EOS). Repetitions alternate.

  python benchmarks/generation_throughput.py --prompts 64 --samples 4 --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def naive(model, tokenizer, prompts, cfg, n) -> int:  # noqa: ANN001 - a baseline script
    import torch

    from workbench.sampling.generation import cut_at_eos, eos_ids_of

    eos = eos_ids_of(model, tokenizer)
    tokens = 0
    for i, p in enumerate(prompts):
        torch.manual_seed(i)
        for _ in range(n):
            out = model.generate(
                input_ids=torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=cfg.max_new_tokens,
                do_sample=True,
                temperature=cfg.temperature,
                top_k=0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(eos),
            )
            ids, eos_id = cut_at_eos(out[0, len(p) :].tolist(), eos)
            tokens += len(ids) + (eos_id is not None)
    return tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.config import DataConfig, GenerationConfig, ModelConfig, SourceConfig, SyntheticSpec
    from workbench.data.pipeline import prepare
    from workbench.models import load_tokenizer
    from workbench.sampling.generation import GenerationStats, generate
    from workbench.tiny import build_tiny_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "m")
        tokenizer = load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prepared = prepare(
        DataConfig(
            sources=[SourceConfig(synthetic=SyntheticSpec(num_pairs=4 * a.prompts, seed=0))], eval_split=0.0, max_length=128
        ),
        0,
        tokenizer,
        kind="prompt",
    )
    prompts = [t.prompt_ids for t in prepared.tokenized["train"]][: a.prompts]
    cfg = GenerationConfig(num_samples=a.samples, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, temperature=1.0)
    generate(model, tokenizer, prompts[:4], cfg, seed=99)  # warm-up, not timed (both paths share kernels)
    naive(model, tokenizer, prompts[:2], cfg, 1)
    rates = {"batched": [], "naive": []}
    for rep in range(a.reps):
        stats = GenerationStats()
        t0 = time.perf_counter()
        generate(model, tokenizer, prompts, cfg, seed=rep, stats=stats)
        rates["batched"].append(stats.new_tokens / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        tokens = naive(model, tokenizer, prompts, cfg, a.samples)
        rates["naive"].append(tokens / (time.perf_counter() - t0))
        print(f"rep {rep}: batched {rates['batched'][-1]:.0f} tok/s, naive {rates['naive'][-1]:.0f} tok/s", flush=True)
    ratios = [b / n for b, n in zip(rates["batched"], rates["naive"])]
    print(f"prompts={len(prompts)} samples={a.samples} max_new_tokens={a.max_new_tokens} batch_size={a.batch_size}")
    spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    print(
        f"ratio batched/naive tokens/s: {statistics.fmean(ratios):.2f} +- {spread:.2f} (per rep: {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
