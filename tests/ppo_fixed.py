"""A PPO learner fed fixed, seeded rollouts: shared by tests/test_rollout.py and the 1-vs-2-process check.

Run as a script (plain or under `accelerate launch`) it performs one update on this process's share
of 16 fixed rollouts and rank 0 saves the updated weights: `python tests/ppo_fixed.py MODEL OUT`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def make_args(**overrides: Any) -> SimpleNamespace:
    from workbench.config import train_config_class, train_field_defaults

    return SimpleNamespace(**{**train_field_defaults(train_config_class("ppo")), "learning_rate": 1e-3, **overrides})


def make_learner(model_dir: Path, temperature: float = 1.0, **overrides: Any) -> tuple[Any, Any]:
    """(Learner, tokenizer) for the tiny model with PPO defaults plus `overrides`."""
    import yaml
    from accelerate import Accelerator

    from workbench.config import recipe_from_dict
    from workbench.methods.ppo import Learner, build_models
    from workbench.models import load_tokenizer

    data = yaml.safe_load((REPO / "recipes" / "ppo.yaml").read_text())
    data["model"]["name_or_path"] = str(model_dir)
    data["output_dir"] = "/nonexistent"
    recipe = recipe_from_dict(data)
    args = make_args(**overrides)
    from transformers import set_seed

    set_seed(0)  # the critic's new head starts the same in every launch
    tokenizer = load_tokenizer(recipe.model)
    model, reference, _ = build_models(recipe, tokenizer, args)
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps)
    return Learner(accelerator, model, reference, args, seed=0, temperature=temperature), tokenizer


def fixed_rollouts(n: int = 16, seed: int = 0) -> tuple[list[list[int]], list[list[int]], list[float]]:
    """n (prompt, response, score) triples with varied lengths, identical in every process."""
    import torch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 60, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    responses = [torch.randint(5, 60, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    scores = torch.rand(n, generator=g).tolist()
    return prompts, responses, scores


def one_update(learner: Any, tokenizer: Any, rows: list[int], step: int = 1) -> dict[str, float] | None:
    from workbench.logprobs import rollout_tensors

    prompts, responses, scores = fixed_rollouts()
    batch = rollout_tensors([prompts[i] for i in rows], [responses[i] for i in rows], tokenizer.pad_token_id, learner.acc.device)
    exp = learner.experience(batch, [scores[i] for i in rows], kl_coef=0.05)
    return learner.update(step, exp, kl_coef=0.05)


def main() -> None:
    import torch

    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    from accelerate import PartialState

    world, rank = PartialState().num_processes, PartialState().process_index
    per = 16 // world
    learner, tokenizer = make_learner(model_dir, per_device_train_batch_size=per, ppo_epochs=1, num_mini_batches=1)
    assert one_update(learner, tokenizer, list(range(rank * per, (rank + 1) * per))) is not None
    state = {k: v.detach().cpu().clone() for k, v in learner.unwrapped.state_dict().items()}
    if rank == 0:
        torch.save(state, out)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
