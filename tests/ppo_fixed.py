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


def make_learner(
    model_dir: Path, temperature: float = 1.0, lora: dict[str, Any] | None = None, **overrides: Any
) -> tuple[Any, Any]:
    """(Learner, tokenizer) for the tiny model with PPO defaults plus `overrides` (and a LoRA config, if given)."""
    import yaml
    from accelerate import Accelerator

    from workbench.config import recipe_from_dict
    from workbench.methods.ppo_learner import Learner, build_models
    from workbench.models import load_tokenizer

    data = yaml.safe_load((REPO / "recipes" / "ppo.yaml").read_text())
    data["model"]["name_or_path"] = str(model_dir)
    data["output_dir"] = "/nonexistent"
    if lora is not None:
        data["model"]["lora"] = lora
    recipe = recipe_from_dict(data)
    args = make_args(**overrides)
    from transformers import set_seed

    set_seed(0)  # the critic's new head starts the same in every launch
    tokenizer = load_tokenizer(recipe.model)
    model, reference, _ = build_models(recipe, tokenizer, args)
    from workbench.method_checks import ppo_mixed_precision

    accelerator = Accelerator(  # as methods/ppo.py builds it
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=ppo_mixed_precision(vars(args))
    )
    return Learner(accelerator, model, reference, args, seed=0, temperature=temperature), tokenizer


def fixed_rollouts(n: int = 16, seed: int = 0) -> tuple[list[list[int]], list[list[int]], list[float]]:
    """n (prompt, response, score) triples with varied lengths, identical in every process."""
    import torch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 60, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    responses = [torch.randint(5, 60, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    scores = torch.rand(n, generator=g).tolist()
    return prompts, responses, scores


def one_update(
    learner: Any, tokenizer: Any, rows: list[int], step: int = 1, scratch: Path | None = None
) -> dict[str, float] | None:
    from workbench.sampling.logprobs import rollout_tensors

    prompts, responses, scores = fixed_rollouts()
    batch = rollout_tensors([prompts[i] for i in rows], [responses[i] for i in rows], tokenizer.pad_token_id, learner.acc.device)
    exp = learner.experience(batch, [scores[i] for i in rows], kl_coef=0.05)
    return learner.update(step, exp, kl_coef=0.05, scratch=scratch)


def nan_on_one_rank(model_dir: Path, out: Path, rank: int, world: int) -> None:
    """Only the last rank sees a NaN loss, in the second mini-batch of an update: every rank must undo it."""

    from workbench import losses

    per = 16 // world
    learner, tokenizer = make_learner(model_dir, per_device_train_batch_size=per, ppo_epochs=1, num_mini_batches=2)
    rows = list(range(rank * per, (rank + 1) * per))
    assert one_update(learner, tokenizer, rows, 1, out.parent / "scratch") is not None
    before = {k: v.detach().cpu().clone() for k, v in learner.unwrapped.state_dict().items()}
    real, calls = losses.clipped_value_loss, []

    def nan_late(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        loss, frac = real(*a, **kw)
        return (loss * float("nan") if len(calls) == 2 and rank == world - 1 else loss), frac

    losses.clipped_value_loss = nan_late
    result = one_update(learner, tokenizer, rows, 2, out.parent / "scratch")
    losses.clipped_value_loss = real
    after = {k: v.detach().cpu().clone() for k, v in learner.unwrapped.state_dict().items()}
    diff = max(float((before[k] - after[k]).abs().max()) for k in before)
    (out.parent / f"nan-rank{rank}.json").write_text(f'{{"skipped": {str(result is None).lower()}, "max_diff": {diff}}}')


def warmup_state(model_dir: Path, out: Path, rank: int, world: int) -> None:
    """One critic warm-up update, then one real one, each one optimizer step: the Adam step counts of the actor's and
    the critic's state (as the optimizer that steps them keys it: under ZeRO, flat partitions) after each."""
    import json

    import torch

    per = 16 // world
    learner, tokenizer = make_learner(
        model_dir, critic_warmup_steps=1, per_device_train_batch_size=per, ppo_epochs=1, num_mini_batches=1
    )
    rows = list(range(rank * per, (rank + 1) * per))

    def steps(group: int) -> list[int]:
        base, keys = learner.optimizer_state_keys(group)
        return [int(torch.as_tensor(base.state[k]["step"]).item()) if base.state.get(k) else 0 for k in keys]

    result = {}
    for step in (1, 2):
        assert one_update(learner, tokenizer, rows, step, out.parent / "scratch") is not None
        result[f"after_{step}"] = {"actor": steps(0), "critic": steps(1)}
    (out.parent / f"warmup-rank{rank}.json").write_text(json.dumps(result))


def main() -> None:
    import torch

    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    from workbench.launch import init_distributed_state

    state = init_distributed_state()  # gloo on CPU, as `workbench train` does
    world, rank = state.num_processes, state.process_index
    if sys.argv[3:] == ["nan"]:
        return nan_on_one_rank(model_dir, out, rank, world)
    if sys.argv[3:] == ["warmup"]:
        return warmup_state(model_dir, out, rank, world)
    per = 16 // world
    print(f"rank {rank} of {world}: rows {per}", flush=True)
    learner, tokenizer = make_learner(model_dir, per_device_train_batch_size=per, ppo_epochs=2, num_mini_batches=1)
    names = {id(p): n for n, p in learner.unwrapped.named_parameters()}
    grads: list[dict[str, Any]] = []  # Adam's first step is sign(g): compare the gradients themselves too
    base = getattr(learner.optimizer, "optimizer", learner.optimizer)
    base.register_step_pre_hook(
        lambda opt, *a: grads.append({names[id(p)]: p.grad.clone() for g in opt.param_groups for p in g["params"]})
    )
    assert one_update(learner, tokenizer, list(range(rank * per, (rank + 1) * per))) is not None
    weights = {k: v.detach().cpu().clone() for k, v in learner.unwrapped.state_dict().items()}
    if rank == 0:
        torch.save({"weights": weights, "grads": grads}, out)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
