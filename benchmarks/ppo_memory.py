"""Activation memory of PPO's learning phase with and without `gradient_checkpointing`, side by side.

Counts the bytes autograd keeps for the backward pass of one training forward (policy + critic) on
a fixed batch, through saved-tensor hooks (what checkpointing exists to cut), on a small model built
offline. Prints both figures and their ratio.

    python benchmarks/ppo_memory.py --layers 8 --hidden 256
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def saved_bytes(model_dir: Path, checkpointing: bool) -> int:
    import torch
    from ppo_fixed import fixed_rollouts, make_learner

    from workbench.sampling.logprobs import rollout_tensors

    learner, tok = make_learner(model_dir, gradient_checkpointing=checkpointing)
    prompts, responses, _ = fixed_rollouts(16)
    batch = rollout_tensors(prompts, [r * 8 for r in responses], tok.pad_token_id, "cpu")
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    learner.model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, values = learner.model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    (logits.float().mean() + values.mean()).backward()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    a = p.parse_args()
    from workbench.tiny import build_tiny_model

    model = build_tiny_model(Path(tempfile.mkdtemp()) / "model", hidden_size=a.hidden, num_layers=a.layers)
    off, on = saved_bytes(model, False), saved_bytes(model, True)
    print(f"saved for backward: without checkpointing {off / 2**20:.1f} MiB, with {on / 2**20:.1f} MiB, ratio {on / off:.2f}")


if __name__ == "__main__":
    main()
