"""Generation tokens/s on the real model (SmolLM2-135M-Instruct, fp32): the workbench's shared batched
generation (length-sorted batches, left padding, KV cache, stops at the end-of-turn token) vs plain
`model.generate` loops a user would write: batches in the data's order, and one prompt at a time.

Same chat-templated hh-rlhf prompts (token ids from the data layer, so identical on every side), same
max_new_tokens, greedy decoding, same EOS (<|im_end|>) and batch size. Throughput counts the new tokens
each side actually produced (up to and including EOS), so a side that stops earlier is not credited
with tokens it did not make; the share of completions identical to the workbench's is reported too.
Variants alternate within each repetition, each going first in turn, so a busy machine slows all of them.

  python benchmarks/real_model_generation.py --model runs/smollm2-135m --prompts 32 --reps 2 \\
      --json benchmarks/results/real_model_generation.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


def completions(rows: Any, eos: set[int]) -> list[list[int]]:
    """New-token rows -> each completion up to and including its first EOS."""
    from workbench.sampling.generation import cut_at_eos

    out = []
    for row in rows:
        ids, eos_id = cut_at_eos(row, eos)
        out.append(ids + ([eos_id] if eos_id is not None else []))
    return out


def plain_generate(
    model: Any, prompts: list[list[int]], batch_size: int, max_new_tokens: int, pad: int, eos: int
) -> list[list[int]]:
    """The baseline: `model.generate` on batches in the given order (left padded; batch_size 1: one prompt at a time)."""
    import torch

    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])  # (batch, width)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        out.extend(completions(gen[:, width:].tolist(), {eos}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="output of `workbench fetch-model smollm2-135m DIR`")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-prompt-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--json", type=Path, help="write the per-rep rates and the summary here")
    a = p.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.config import DataConfig, GenerationConfig, ModelConfig, SourceConfig
    from workbench.data.pipeline import prepare
    from workbench.models import load_tokenizer
    from workbench.sampling.generation import GenerationStats, eos_ids_of, generate

    tokenizer = load_tokenizer(ModelConfig(name_or_path=a.model))
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    prepared = prepare(
        DataConfig(
            sources=[SourceConfig(path=str(HH), format="hh-rlhf")],
            on_invalid="drop",
            eval_split=0.0,
            max_length=a.max_prompt_length + a.max_new_tokens,
            max_prompt_length=a.max_prompt_length,
        ),
        0,
        tokenizer,
        kind="prompt",
    )
    prompts = [t.prompt_ids for t in prepared.tokenized["train"]][: a.prompts]
    eos = eos_ids_of(model, tokenizer)
    assert eos == {tokenizer.eos_token_id}, f"expected one EOS (<|im_end|>), got {eos}"
    pad, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    cfg = GenerationConfig(num_samples=1, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, temperature=0.0)

    def ours() -> list[list[int]]:
        made = sorted(generate(model, tokenizer, prompts, cfg, seed=0), key=lambda c: c.prompt_index)
        return [c.token_ids + ([c.eos_id] if c.finished else []) for c in made]

    variants = {
        "workbench": ours,
        "plain_batched": lambda: plain_generate(model, prompts, a.batch_size, a.max_new_tokens, pad, eos_id),
        "plain_per_prompt": lambda: plain_generate(model, prompts, 1, a.max_new_tokens, pad, eos_id),
    }
    generate(model, tokenizer, prompts[:2], cfg, seed=0, stats=GenerationStats())  # warm-up, not timed
    plain_generate(model, prompts[:1], 1, 4, pad, eos_id)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    tokens: dict[str, list[int]] = {k: [] for k in variants}
    outputs: dict[str, list[list[int]]] = {}
    names = list(variants)
    for rep in range(a.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # each variant goes first in turn
            fn = variants[name]
            t0 = time.perf_counter()
            outputs[name] = fn()
            seconds = time.perf_counter() - t0
            tokens[name].append(sum(len(c) for c in outputs[name]))
            rates[name].append(tokens[name][-1] / seconds)
            print(f"rep {rep} {name:<17} {tokens[name][-1]} tokens, {rates[name][-1]:.1f} tokens/s", flush=True)
    mean_prompt = statistics.fmean(len(x) for x in prompts)
    print(
        f"\nSmolLM2-135M-Instruct fp32 greedy, {len(prompts)} prompts (mean {mean_prompt:.0f} tokens), "
        f"max_new_tokens {a.max_new_tokens}, batch {a.batch_size}, reps {a.reps}, torch threads {torch.get_num_threads()}"
    )
    result: dict[str, Any] = {"settings": {**vars(a), "json": None}, "mean_prompt_tokens": mean_prompt, "variants": {}}
    for name in variants:
        ratios = [w / r for w, r in zip(rates["workbench"], rates[name])]
        same = sum(x == y for x, y in zip(outputs[name], outputs["workbench"])) / len(prompts)
        spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        print(
            f"{name:<17} tokens/s {statistics.fmean(rates[name]):6.1f} (runs {', '.join(f'{x:.1f}' for x in rates[name])})"
            f"  tokens {tokens[name][-1]}  workbench/this {statistics.fmean(ratios):.2f} +- {spread:.2f}"
            f"  completions identical to the workbench's {same:.0%}"
        )
        result["variants"][name] = {
            "tokens_per_s": rates[name],
            "new_tokens": tokens[name],
            "workbench_over_this": ratios,
            "workbench_over_this_mean": statistics.fmean(ratios),
            "workbench_over_this_stdev": spread,
            "identical_to_workbench": same,
        }
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process (model + all variants): {result['peak_rss_mb']:.0f} MB")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
