"""Peak memory of evaluation's response log-probs, side by side: the plain computation (the whole
sequence's logits, then a float32 log_softmax over them) against `workbench.sampling.logprobs.token_logprobs`
(logits only for the positions that predict response tokens, `logits_to_keep`, and logsumexp a few
rows at a time). Each variant runs in a fresh process; the figure is the rise of peak RSS over the
process's RSS just before the call (model loaded, inputs built), and both results are compared.

    python benchmarks/logprob_memory.py                         # random 2-layer model, 49,152-token vocabulary
    python benchmarks/logprob_memory.py --model runs/smollm2-135m   # the real model (workbench fetch-model)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load(model_dir: str | None):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if model_dir:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return LlamaForCausalLM(config).eval()


def measure(variant: str, model_dir: str | None, rows: int, prompt_len: int, response_len: int) -> dict:
    import torch

    from workbench.sampling.logprobs import rollout_tensors, token_logprobs

    model = load(model_dir)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (prompt_len - i % 7,), generator=g).tolist() for i in range(rows)]
    responses = [torch.randint(3, vocab, (response_len - i % 5,), generator=g).tolist() for i in range(rows)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if variant == "plain":
        batch = rollout_tensors(prompts, responses, 0, "cpu")
        with torch.no_grad():
            logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
            p, r = batch["prompt_width"], batch["response_mask"].shape[1]
            lp = torch.log_softmax(logits[:, p - 1 : p - 1 + r].float(), -1)
            lp = lp.gather(-1, batch["input_ids"][:, p:].unsqueeze(-1)).squeeze(-1)
        out = [lp[i, : len(responses[i])].tolist() for i in range(rows)]
    else:
        out = token_logprobs(model, prompts, responses, 0, batch_size=rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "peak_rise_mb": peak - before, "sum_logprob": sum(sum(r) for r in out)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--response-len", type=int, default=64)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.model, args.rows, args.prompt_len, args.response_len)))
        return
    results = {}
    for variant in ("plain", "workbench"):
        cmd = [sys.executable, __file__, "--child", variant, "--rows", str(args.rows)]
        cmd += ["--prompt-len", str(args.prompt_len), "--response-len", str(args.response_len)]
        cmd += ["--model", args.model] if args.model else []
        res = subprocess.run(
            cmd, capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
        )
        results[variant] = json.loads(res.stdout.strip().splitlines()[-1])
    plain, ours = results["plain"], results["workbench"]
    print(
        f"{args.rows} rows x (prompt ~{args.prompt_len} + response ~{args.response_len}) tokens, model {args.model or 'random 49k-vocab'}"
    )
    print(f"{'variant':<12} {'peak RSS rise MiB':>18} {'sum of log-probs':>18}")
    for r in (plain, ours):
        print(f"{r['variant']:<12} {r['peak_rise_mb']:18.0f} {r['sum_logprob']:18.3f}")
    print(f"ratio plain / workbench: {plain['peak_rise_mb'] / max(ours['peak_rise_mb'], 1.0):.1f}x")


if __name__ == "__main__":
    main()
