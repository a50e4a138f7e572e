"""The checks of a recipe's method settings that `validate` makes and `train` makes again as the method starts.

One list (`method_problems`): `validate.check_recipe` (and so `train`'s preflight) reports it, and each method
refuses with it before building anything, so the two never disagree. Pure functions of the recipe, its `train:`
values over the method's defaults, this machine and the number of processes: no weights are loaded and no
trainer module is imported.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from typing import Any

from workbench.config import METHODS, GenerationConfig, ModelConfig, Recipe, plain_train_defaults
from workbench.errors import RecipeError
from workbench.online import online_problems
from workbench.sampling.settings import PAIRS_SAMPLING, PPO_SAMPLING, REJECTION_SAMPLING, sampling_problems
from workbench.sampling.settings import eval_sampling_problems as eval_sampling_problems  # compare imports it from here

F_DIVERGENCE_LOSSES = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}  # TRL's DPOTrainer


def either(values: Sequence[int]) -> str:
    return " or ".join(str(v) for v in values)


def nearest_multiples(value: int, step: int) -> list[int]:
    """The multiples of `step` on either side of `value` (just `step` when value is below it)."""
    below, above = value // step * step, -(-value // step) * step
    return sorted({m for m in (below, above) if m >= step})


def nearest_divisors(number: int, target: int) -> list[int]:
    """The divisors of `number` on either side of `target`."""
    divisors = [d for d in range(1, number + 1) if number % d == 0]
    return sorted({*[d for d in divisors if d <= target][-1:], *[d for d in divisors if d >= target][:1]})


def effective_train(recipe: Recipe) -> dict[str, Any]:
    """The `train:` values the run uses: the recipe's over the method's defaults (plain YAML values)."""
    return {**plain_train_defaults(recipe.method), **recipe.train}


# ----------------------------------------------------------------------------------------------
# PPO


def ppo_kl_estimator(kl_estimator: str, kl_in: str) -> str:
    """`auto`: k1 in the reward (its penalty's policy gradient is the KL's), k2 in the loss (its gradient is exactly
    KL(pi || ref)'s on-policy; k1's expected gradient there is 0, k3's is the reverse KL's)."""
    if kl_estimator != "auto":
        return kl_estimator
    return "k2" if kl_in == "loss" else "k1"


def ppo_measured_kl(kl_estimator: str, kl_in: str) -> str:
    """The estimator of the KL PPO logs, steers `target_kl` by and diagnoses: the penalty itself when it is in the
    reward; k3 (unbiased, never negative) when the penalty is a loss term, whatever estimator that term uses."""
    return ppo_kl_estimator(kl_estimator, kl_in) if kl_in == "reward" else "k3"


def ppo_batch_problems(rows: int, mini_batches: int, accumulation: int, num_generations: int = 1) -> list[str]:
    """Every row of a rollout is trained once per epoch: `mini_batches` equal mini-batches (one optimizer step each)
    of `accumulation` equal micro-batches; anything else drops rows or leaves gradients for the next update."""
    per_step = mini_batches * accumulation
    if rows % per_step == 0:
        return []
    options = [f"per_device_train_batch_size {either(nearest_multiples(rows, math.lcm(per_step, num_generations)))}"]
    if rows % accumulation == 0:
        options.append(f"num_mini_batches {either(nearest_divisors(rows // accumulation, mini_batches))}")
    if rows % mini_batches == 0:
        options.append(f"gradient_accumulation_steps {either(nearest_divisors(rows // mini_batches, accumulation))}")
    return [
        f"`train.per_device_train_batch_size` ({rows}) must be a multiple of `train.num_mini_batches` ({mini_batches}) x "
        f"`train.gradient_accumulation_steps` ({accumulation}) = {per_step}, or rows of each rollout go untrained or "
        f"gradients carry into the next update; use {', or '.join(options)}"
    ]


def ppo_problems(train: dict[str, Any], generation: GenerationConfig) -> list[str]:
    """PPO's own settings (train: over PPOConfig's defaults), its precision, and the sampling its learner can model."""
    from workbench.config.train_args import precision_problems

    problems = sampling_problems(generation, PPO_SAMPLING) + precision_problems(train)
    counts = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations", "num_mini_batches", "ppo_epochs")
    small = [f"`train.{key}: {train[key]}` must be at least 1" for key in counts if train[key] < 1]
    if small:  # the size checks below need positive sizes
        return problems + small
    rows, generations = train["per_device_train_batch_size"], train["num_generations"]
    if rows % generations:
        problems.append(
            f"`train.num_generations` ({generations}) must divide `train.per_device_train_batch_size` ({rows}) (whole "
            f"prompts on each process); use per_device_train_batch_size {either(nearest_multiples(rows, generations))}, "
            f"or num_generations {either(nearest_divisors(rows, generations))}"
        )
    if train["score_baseline"] == "prompt" and generations < 2:
        problems.append("`train.score_baseline: prompt` needs `train.num_generations` >= 2 (samples of the same prompt)")
    if train["kl_in"] == "loss" and train["kl_estimator"] == "k1":
        problems.append(
            "`train.kl_estimator: k1` with `train.kl_in: loss` regularizes nothing (the expected gradient of log pi - "
            "log pi_ref is 0); use k2 (the default with kl_in: loss) or k3, or keep k1 with `train.kl_in: reward`"
        )
    problems.extend(ppo_batch_problems(rows, train["num_mini_batches"], train["gradient_accumulation_steps"], generations))
    return problems


def ppo_mixed_precision(train: dict[str, Any]) -> str | None:
    """accelerate's `mixed_precision` from TrainingArguments' precision fields, read as transformers reads them: true
    sets it; otherwise (false or unset) the accelerate config's setting stands (fp32 without one); plan.py agrees."""
    if train.get("bf16"):
        return "bf16"
    return "fp16" if train.get("fp16") else None


# ----------------------------------------------------------------------------------------------
# Rejection sampling, KTO, and what every Trainer-backed method needs


def rejection_sampling_problems(train: dict[str, Any], generation: GenerationConfig) -> list[str]:
    problems = sampling_problems(generation, REJECTION_SAMPLING)
    if train["selection"] == "threshold" and train.get("score_threshold") is None:
        problems.append("`train.selection: threshold` needs `train.score_threshold` (the lowest score kept)")
    if train["selection"] == "top_k" and train["top_k"] < 1:
        problems.append(f"`train.top_k: {train['top_k']}` must be at least 1 with `train.selection: top_k`")
    return problems


def pairs_problems(train: dict[str, Any], generation: GenerationConfig) -> list[str]:
    """A pair compares two sampled responses of one prompt, and a tie is never a preference."""
    problems = sampling_problems(generation, PAIRS_SAMPLING)
    if generation.num_samples < 2:
        problems.append(
            f"`generation.num_samples: {generation.num_samples}`: a pair compares two responses of one prompt; "
            "set it to 2 or more (4 is usual)"
        )
    if train["min_margin"] < 0:
        problems.append(
            f"`train.min_margin: {train['min_margin']}` must not be negative (best - worst > a negative margin would "
            "make ties into pairs); use 0 or more"
        )
    return problems


def kto_problems(train: dict[str, Any]) -> list[str]:
    """TRL's KTOTrainer pairs each example with a neighbour's completion for its KL term (every loss but apo_zero_unpaired)."""
    if train.get("loss_type") == "apo_zero_unpaired":
        return []
    problems = []
    if train["per_device_train_batch_size"] < 2:
        problems.append(
            f"`train.per_device_train_batch_size: {train['per_device_train_batch_size']}`: KTO's KL term pairs examples "
            "within a batch, so it needs at least 2"
        )
    if train.get("train_sampling_strategy", "sequential") != "sequential":
        problems.append(
            f"`train.train_sampling_strategy: {train['train_sampling_strategy']}`: KTO's KL term pairs neighbours in a "
            "fixed order; use sequential (the data is shuffled once before training)"
        )
    return problems


def dpo_problems(train: dict[str, Any]) -> list[str]:
    """Combinations TRL's DPOTrainer refuses as it is built."""
    losses = train.get("loss_type") or ["sigmoid"]
    losses = [losses] if isinstance(losses, str) else list(losses)
    problems = []
    divergence = train.get("f_divergence_type", "reverse_kl")
    if divergence != "reverse_kl" and not set(losses) <= F_DIVERGENCE_LOSSES:
        problems.append(
            f"`train.f_divergence_type: {divergence}` works only with the loss types {', '.join(sorted(F_DIVERGENCE_LOSSES))}; "
            f"`train.loss_type` is {losses}"
        )
    if train.get("use_weighting") and {"aot", "aot_unpaired"} & set(losses):
        problems.append("`train.use_weighting: true` cannot be used with the aot losses (they sort samples); remove one")
    if "exo_pair" in losses and not train.get("label_smoothing"):
        problems.append("`train.loss_type` exo_pair needs `train.label_smoothing` > 0 (the EXO paper uses 1e-3)")
    return problems


def trainer_problems(recipe: Recipe, train: dict[str, Any]) -> list[str]:
    """What transformers' Trainer refuses at construction: evaluation without an eval set."""
    strategy = str(train.get("eval_strategy") or "no")
    if strategy == "no":
        return []
    if recipe.method == "rejection_sampling":
        return [f"`train.eval_strategy: {strategy}`: rejection sampling's fine-tuning stage has no eval set; set it to no"]
    if recipe.data.eval_split == 0:
        return [
            f"`train.eval_strategy: {strategy}` needs an eval set, but `data.eval_split` is 0; raise it or set eval_strategy: no"
        ]
    return []


def lm_head_problems(model: ModelConfig, method: str) -> list[str]:
    targets = (model.lora or {}).get("target_modules") or []
    named = [targets] if isinstance(targets, str) else list(targets)
    if METHODS[method].reads_lm_head and "lm_head" in named:
        return [
            f"`model.lora.target_modules` includes lm_head, which {method}'s trainer reads directly (an adapter there "
            "would never train); remove it"
        ]
    return []


def quantization_problems(model: ModelConfig) -> list[str]:
    """QLoRA needs a CUDA GPU, bitsandbytes and LoRA adapters to train."""
    if model.quantization is None:
        return []
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(
            f"`model.quantization: {model.quantization}` (QLoRA) needs a CUDA GPU; remove it to train on this machine"
        )
    elif importlib.util.find_spec("bitsandbytes") is None:
        problems.append("`model.quantization` needs bitsandbytes: pip install 'workbench[qlora]'")
    if model.lora is None:
        problems.append("`model.quantization` trains LoRA adapters on a frozen quantized base; set `model.lora` too")
    return problems


# ----------------------------------------------------------------------------------------------
# The list


def method_problems(recipe: Recipe, processes: int = 1) -> list[str]:
    """Every problem of the method's settings a run would stop on before (or soon after) its first step."""
    train = effective_train(recipe)
    problems = quantization_problems(recipe.model) + lm_head_problems(recipe.model, recipe.method)
    if METHODS[recipe.method].hf_trainer:
        problems.extend(trainer_problems(recipe, train))
    if recipe.method == "ppo":
        problems.extend(ppo_problems(train, recipe.generation))
    elif recipe.method == "rejection_sampling":
        problems.extend(rejection_sampling_problems(train, recipe.generation))
    elif recipe.method == "pairs":
        problems.extend(pairs_problems(train, recipe.generation))
    elif recipe.method == "kto":
        problems.extend(kto_problems(train))
    elif recipe.method == "dpo":
        problems.extend(dpo_problems(train))
    elif METHODS[recipe.method].sampling == "trl":
        problems.extend(online_problems(recipe, train, processes))
    return problems


def refuse_method_problems(recipe: Recipe, processes: int) -> None:
    """A method's first step: stop with every problem of `method_problems`, as `validate` lists them."""
    problems = method_problems(recipe, processes)
    if problems:
        raise RecipeError(recipe.output_dir + "/recipe.yaml", problems)
