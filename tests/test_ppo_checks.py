"""PPO's settings, checked before a run and honoured by its learner (issue 25, items 1, 2 and 4): a KL term in the loss
has the KL's gradient, every rollout row is trained once per epoch with nothing left for the next update, and critic
warm-up leaves the actor's optimizer state as a fresh Adam's. One process, the tiny model, fixed rollouts."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO
from ppo_fixed import make_learner, one_update
from test_validate import recipe_file, validate_err, write_jsonl

from workbench.cli import main
from workbench.errors import WorkbenchError


def ppo_file(tmp_path, tiny_model, **train):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"say something {i}"} for i in range(8)])
    reward = {"function": "workbench.data.synthetic:vowel_reward"}
    return recipe_file(tmp_path, tiny_model, prompts, method="ppo", reward_model=reward, train=train)


# ----------------------------------------------------------------------------------------------
# item 1: the KL term in the loss


def test_the_kl_loss_term_defaults_to_k2_and_the_logged_kl_to_k3(tiny_model, monkeypatch):
    """With `kl_in: loss` and no estimator named, the loss term is k2 (its expected gradient is KL(pi || ref)'s, see
    tests/test_losses.py), never k1 (none); the KL logged and steered by stays an unbiased, non-negative k3."""
    from workbench import losses

    seen: list[str] = []
    real = losses.kl_per_token
    monkeypatch.setattr(
        losses, "kl_per_token", lambda lp, ref, estimator="k1": seen.append(estimator) or real(lp, ref, estimator)
    )
    learner, tokenizer = make_learner(tiny_model, kl_in="loss", per_device_train_batch_size=16, ppo_epochs=1)
    assert one_update(learner, tokenizer, list(range(16))) is not None
    assert seen == ["k3", "k2"]  # the experience pass (logged KL), then the one micro-batch's loss term
    seen.clear()
    learner, tokenizer = make_learner(tiny_model, per_device_train_batch_size=16, ppo_epochs=1)  # kl_in: reward
    assert one_update(learner, tokenizer, list(range(16))) is not None
    assert seen == ["k1"]  # in the reward only: its policy gradient is the KL's


def test_validate_refuses_k1_in_the_loss_and_accepts_the_default(tmp_path, tiny_model, capsys):
    err = validate_err(ppo_file(tmp_path, tiny_model, kl_in="loss", kl_estimator="k1"), capsys)
    assert (
        "`train.kl_estimator: k1` with `train.kl_in: loss` regularizes nothing (the expected gradient of log pi - log pi_ref "
        "is 0); use k2 (the default with kl_in: loss) or k3, or keep k1 with `train.kl_in: reward`"
    ) in err
    assert main(["validate", str(ppo_file(tmp_path, tiny_model, kl_in="loss"))]) == 0, capsys.readouterr().err


def test_the_short_responses_hint_names_a_kl_loss_term_that_regularizes():
    """The hint said "try train.kl_in: loss", which with the then-default k1 put a term with no expected gradient in
    the loss; the setting it names now validates on the shipped recipe and gives a k2 loss term."""
    from workbench import health
    from workbench.config import load_recipe

    first = [{health.PPO_LENGTH: 16.0, health.PPO_FINISHED: 0.0}] * 4
    last = [{health.PPO_LENGTH: 2.0, health.PPO_FINISHED: 1.0}] * 4
    flag = health.short_responses(first, last, cap=16)
    assert flag is not None and "try train.kl_in: loss with train.kl_estimator: k2 (" in flag["message"]
    from workbench.method_checks import effective_train, method_problems, ppo_kl_estimator

    recipe = load_recipe(REPO / "recipes" / "ppo.yaml", ["train.kl_in=loss", "train.kl_estimator=k2"])
    train = effective_train(recipe)
    assert method_problems(recipe) == [] and ppo_kl_estimator(train["kl_estimator"], train["kl_in"]) == "k2"
    recipe = load_recipe(REPO / "recipes" / "ppo.yaml", ["train.kl_in=loss"])  # the shipped recipe's auto: k2 too
    assert ppo_kl_estimator(recipe.train["kl_estimator"], "loss") == "k2"


# ----------------------------------------------------------------------------------------------
# item 2: sizes that do not divide


def rows_trained(learner, tokenizer, rows, monkeypatch) -> list[int]:
    seen: list[int] = []
    real = learner.micro_step

    def spy(exp, picked, *args):
        seen.extend(int(r) for r in picked)
        return real(exp, picked, *args)

    monkeypatch.setattr(learner, "micro_step", spy)
    try:
        one_update(learner, tokenizer, rows)
    except WorkbenchError as exc:
        return [*seen, str(exc)]
    return seen


def test_a_rollout_that_mini_batches_do_not_divide_is_refused_not_cut(tiny_model, monkeypatch):
    """6 rows in 4 mini-batches of 6 // 4 = 1 row trained rows [0, 1, 2, 5] of 0..5 (2 never) per epoch, silently."""
    learner, tokenizer = make_learner(tiny_model, per_device_train_batch_size=6, num_mini_batches=4, ppo_epochs=1)
    seen = rows_trained(learner, tokenizer, list(range(6)), monkeypatch)
    assert seen == [
        "`train.per_device_train_batch_size` (6) must be a multiple of `train.num_mini_batches` (4) x "
        "`train.gradient_accumulation_steps` (1) = 4, or rows of each rollout go untrained or gradients carry into the "
        "next update; use per_device_train_batch_size 4 or 8, or num_mini_batches 3 or 6"
    ], f"trained rows {sorted(r for r in seen if isinstance(r, int))} of 0..5 without a word"


def test_accumulation_that_does_not_divide_is_refused_and_leaves_no_gradient(tiny_model, monkeypatch):
    """6 rows with accumulation 4 ran 6 micro-steps of one row and one optimizer step: the last 2 micro-batches'
    gradients stayed in .grad for the next update."""
    learner, tokenizer = make_learner(tiny_model, per_device_train_batch_size=6, gradient_accumulation_steps=4, ppo_epochs=1)
    seen = rows_trained(learner, tokenizer, list(range(6)), monkeypatch)
    left = [n for n, p in learner.unwrapped.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)]
    assert not left, f"gradients left for the next update in {len(left)} tensors, e.g. {left[:2]}"
    assert seen == [
        "`train.per_device_train_batch_size` (6) must be a multiple of `train.num_mini_batches` (1) x "
        "`train.gradient_accumulation_steps` (4) = 4, or rows of each rollout go untrained or gradients carry into the "
        "next update; use per_device_train_batch_size 4 or 8, or gradient_accumulation_steps 3 or 6"
    ]


def test_sizes_that_divide_train_every_row_once_per_epoch(tiny_model, monkeypatch):
    learner, tokenizer = make_learner(
        tiny_model, per_device_train_batch_size=8, num_mini_batches=2, gradient_accumulation_steps=2, ppo_epochs=2
    )
    seen = rows_trained(learner, tokenizer, list(range(8)), monkeypatch)
    assert sorted(seen[:8]) == sorted(seen[8:]) == list(range(8))  # two epochs of 2 mini-batches x 2 micro-batches x 2 rows
    assert all(p.grad is None for p in learner.unwrapped.parameters())  # nothing carried into the next update


def test_nearest_sizes():
    from workbench.method_checks import nearest_divisors, nearest_multiples, ppo_batch_problems

    assert nearest_multiples(6, 4) == [4, 8] and nearest_multiples(2, 4) == [4] and nearest_multiples(8, 4) == [8]
    assert nearest_divisors(6, 4) == [3, 6] and nearest_divisors(30, 4) == [3, 5] and nearest_divisors(7, 2) == [1, 7]
    assert ppo_batch_problems(12, 2, 3) == [] and ppo_batch_problems(12, 3, 2, num_generations=4) == []
    # 10 rows, 4 mini-batches of accumulation 1, 4 generations per prompt: multiples of lcm(4, 4) = 4, divisors of 10
    assert ppo_batch_problems(10, 4, 1, num_generations=4)[0].endswith(
        "use per_device_train_batch_size 8 or 12, or num_mini_batches 2 or 5"
    )


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        (
            {"per_device_train_batch_size": 6, "num_mini_batches": 4},
            "`train.per_device_train_batch_size` (6) must be a multiple of `train.num_mini_batches` (4) x "
            "`train.gradient_accumulation_steps` (1) = 4",
        ),
        (
            {"per_device_train_batch_size": 30, "num_generations": 4},
            "`train.num_generations` (4) must divide `train.per_device_train_batch_size` (30) (whole prompts on each "
            "process); use per_device_train_batch_size 28 or 32, or num_generations 3 or 5",
        ),
    ],
    ids=["mini_batches", "generations"],
)
def test_validate_names_the_sizes_that_divide(tmp_path, tiny_model, capsys, train, expected):
    assert expected in validate_err(ppo_file(tmp_path, tiny_model, **train), capsys)


# ----------------------------------------------------------------------------------------------
# item 4: critic warm-up and the actor's Adam state


def test_critic_warmup_leaves_the_actor_optimizer_fresh(tiny_model):
    """Two warm-up updates (2 epochs x 2 mini-batches each) advanced the actor's Adam step to 8 with zero gradients, so
    its first real step was a bias-corrected 1 - 0.9^9 = 0.61 of m over sqrt(1 - 0.999^9) of v: not a fresh Adam's."""
    learner, tokenizer = make_learner(
        tiny_model, critic_warmup_steps=2, per_device_train_batch_size=16, ppo_epochs=2, num_mini_batches=2
    )
    base = learner.optimizer.optimizer  # accelerate's wrapper -> torch's AdamW
    names = {id(p): n for n, p in learner.unwrapped.named_parameters()}
    for step in (1, 2):
        assert one_update(learner, tokenizer, list(range(16)), step) is not None
    stale = {names[id(p)]: int(base.state[p]["step"]) for p in learner.actor_params if base.state.get(p)}
    assert not stale, f"after warm-up the actor's Adam state has steps {sorted(set(stale.values()))} ({len(stale)} tensors)"
    assert all(int(base.state[p]["step"]) == 8 for p in learner.critic_params)  # the critic did train: 2 x 2 x 2 steps

    first: dict[str, torch.Tensor] = {}  # the actor's first real step: parameters and gradients before, parameters after

    def before(opt, *args):
        if not first:
            first.update({f"{names[id(p)]}:p": p.detach().clone() for p in learner.actor_params})
            first.update({f"{names[id(p)]}:g": p.grad.detach().clone() for p in learner.actor_params})
            first["lr"] = torch.tensor(opt.param_groups[0]["lr"])

    def after(opt, *args):
        if "done" not in first:
            first.update({f"{names[id(p)]}:after": p.detach().clone() for p in learner.actor_params})
            first["done"] = torch.tensor(1)

    handles = [base.register_step_pre_hook(before), base.register_step_post_hook(after)]
    assert one_update(learner, tokenizer, list(range(16)), 3) is not None
    for h in handles:
        h.remove()
    moved = 0
    for p in learner.actor_params:
        name = names[id(p)]
        fresh = torch.nn.Parameter(first[f"{name}:p"].clone())
        fresh.grad = first[f"{name}:g"]
        torch.optim.AdamW([fresh], lr=float(first["lr"]), weight_decay=0.0).step()  # a fresh Adam on the same gradient
        assert torch.allclose(first[f"{name}:after"], fresh.detach(), rtol=0, atol=1e-7), name
        moved += int(not torch.equal(first[f"{name}:after"], first[f"{name}:p"]))
    assert moved > len(learner.actor_params) // 2  # the actor really took its first step


# ----------------------------------------------------------------------------------------------
# issue 30, item 11: PPO takes the precision fields of every TRL-backed method


def test_ppo_takes_bf16_with_the_same_verdict_as_other_methods(tmp_path, tiny_model, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = validate_err(ppo_file(tmp_path, tiny_model, bf16=True), capsys)
    dpo = validate_err(recipe_file(tmp_path, tiny_model, train={"bf16": True}), capsys)
    sentence = "`train.bf16: true` needs a CUDA GPU, and this machine has none; remove it (fp32 is used)"
    assert sentence in err and sentence in dpo and "unknown key" not in err


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's process state is a singleton that fixes mixed precision once: reset it around a bf16 learner."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_runs_the_ppo_update_under_accelerate_autocast(tiny_model, fresh_accelerate_state):
    """`bf16: true` reaches accelerate (CPU autocast here: the recipe check refuses it on this machine, the learner is
    built directly): the forwards run in bf16, log-probs, losses and the fp32 weights stay float32 and finite."""
    learner, tokenizer = make_learner(tiny_model, bf16=True, per_device_train_batch_size=16, ppo_epochs=1)
    assert learner.acc.mixed_precision == "bf16"
    dtypes: list[torch.dtype] = []
    learner.unwrapped.policy.get_output_embeddings().register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    result = one_update(learner, tokenizer, list(range(16)))
    assert result is not None and all(v == v and abs(v) < 1e6 for v in result.values()), result
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the experience pass and the update both autocast
    assert {p.dtype for p in learner.unwrapped.parameters()} == {torch.float32}


def test_precision_fields_map_onto_accelerate():
    from workbench.method_checks import ppo_mixed_precision

    assert ppo_mixed_precision({"bf16": True, "fp16": False}) == "bf16"
    assert ppo_mixed_precision({"bf16": None, "fp16": True}) == "fp16"
    assert ppo_mixed_precision({"bf16": False, "fp16": False}) is None  # the accelerate config decides, as in transformers
    assert ppo_mixed_precision({"bf16": None, "fp16": False}) is None
