"""The recipe's `generation:` block: what each consumer of the sampling path refuses, and what each sampler is given.

One list of refusals (`sampling_problems`) for every consumer: PPO, rejection sampling, pairs and the evaluation
name themselves with a `SamplingUse`, and `validate`, each method's first step and the evaluation all ask it.
The same block becomes a complete transformers GenerationConfig (`hf_generation_config`) or TRL's GRPO / RLOO
fields (`trl_generation_fields`). Pure functions of the settings: nothing is loaded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from workbench.config import GenerationConfig
from workbench.errors import RecipeError, WorkbenchError


@dataclass(frozen=True)
class SamplingUse:
    """A consumer of the sampling path: its name and settings key (for messages), whether it computes the log-probs
    of what it samples (then only softmax(logits / temperature) can be sampled), and whether the recipe's
    `backend` applies to it (the evaluation always samples with transformers)."""

    who: str
    key: str
    needs_logprobs: bool
    backend_applies: bool = True


PPO_SAMPLING = SamplingUse("PPO", "generation", needs_logprobs=True)
REJECTION_SAMPLING = SamplingUse("rejection sampling", "generation", needs_logprobs=False)
PAIRS_SAMPLING = SamplingUse("pairs", "generation", needs_logprobs=False)
EVAL_SAMPLING = SamplingUse("evaluation", "eval.generation", needs_logprobs=True, backend_applies=False)


def unmodelled_sampling_problems(cfg: GenerationConfig, who: str, key: str = "generation") -> list[str]:
    """One sentence per setting whose sampled distribution is not softmax(logits / temperature), the one whose
    log-probs every consumer computes: a learner would train on wrong log-probs, an evaluation's KL would be
    NaN (greedy) or biased (truncated sampling)."""
    problems = []
    if cfg.temperature <= 0:
        problems.append(
            f"{who} needs the log-probs of what it samples and greedy decoding has none (`{key}.temperature: {cfg.temperature}`); "
            f"set `{key}.temperature` > 0 (1.0 is usual)"
        )
    if cfg.top_k:
        problems.append(
            f"{who} computes log-probs of the whole distribution, not of top-k sampling (`{key}.top_k: {cfg.top_k}`), "
            f"which gives every other token probability 0; set `{key}.top_k: 0`"
        )
    if cfg.top_p < 1.0:
        problems.append(
            f"{who} computes log-probs of the whole distribution, not of nucleus sampling (`{key}.top_p: {cfg.top_p}`), "
            f"which gives every token outside the nucleus probability 0; set `{key}.top_p: 1.0`"
        )
    return problems


def greedy_problems(cfg: GenerationConfig, num_samples: int) -> list[str]:
    if cfg.temperature <= 0 and num_samples > 1:
        return ["`generation.temperature: 0` (greedy) gives one completion per prompt; set num_samples: 1 or a temperature > 0"]
    return []


def backend_problems(cfg: GenerationConfig) -> list[str]:
    """The vLLM backend is refused clearly: missing package, or (this version) not yet supported."""
    if cfg.backend != "vllm":
        return []
    if importlib.util.find_spec("vllm") is None:
        return [
            "`generation.backend: vllm` needs vLLM: pip install 'workbench[vllm]' (on a CUDA machine), or use backend: transformers"
        ]
    return ["`generation.backend: vllm` is not supported by this version of the workbench; use backend: transformers"]


def sampling_problems(cfg: GenerationConfig, use: SamplingUse, num_samples: int | None = None) -> list[str]:
    """Every setting `use` cannot sample with: an unmodelled distribution where it needs log-probs (greedy decoding
    with several samples per prompt otherwise), and an unavailable backend where the backend applies."""
    if use.needs_logprobs:
        problems = unmodelled_sampling_problems(cfg, use.who, use.key)
    else:
        problems = greedy_problems(cfg, cfg.num_samples if num_samples is None else num_samples)
    return problems + (backend_problems(cfg) if use.backend_applies else [])


def eval_sampling_problems(cfg: GenerationConfig) -> list[str]:
    """`sampling_problems` of an `eval.generation` block (run recipes and comparison recipes alike)."""
    return sampling_problems(cfg, EVAL_SAMPLING)


def refuse_sampling(cfg: GenerationConfig, use: SamplingUse, source: str = "recipe") -> None:
    """Raise, listing every problem of `sampling_problems`, before anything is loaded or sampled."""
    problems = sampling_problems(cfg, use)
    if problems:
        raise RecipeError(source, problems)


# ----------------------------------------------------------------------------------------------
# The block as transformers' GenerationConfig


def sampling_kwargs(cfg: GenerationConfig, num_samples: int) -> dict[str, Any]:
    """The recipe's sampling settings, and explicitly neutral values for every other logits processor."""
    sample = cfg.temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": cfg.max_new_tokens,
        "min_new_tokens": 0,
        "do_sample": sample,
        "num_beams": 1,
        "num_return_sequences": num_samples,
        "use_cache": True,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "typical_p": 1.0,
        "epsilon_cutoff": 0.0,
        "eta_cutoff": 0.0,
        "renormalize_logits": False,
    }
    if sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    else:
        for problem in greedy_problems(cfg, num_samples):
            raise WorkbenchError(problem)
    return kwargs


def hf_generation_config(cfg: GenerationConfig, num_samples: int, pad_id: int, eos_ids: set[int]) -> Any:
    """A complete transformers GenerationConfig built from the recipe alone.

    `generate` fills every unset field from the checkpoint's generation_config.json (which may carry
    repetition_penalty, typical_p, suppress_tokens, ...); `generate_batch` therefore installs this
    config as the model's own for the call, so nothing the recipe did not ask for is applied.
    """
    from transformers import GenerationConfig as HFGenerationConfig

    return HFGenerationConfig(pad_token_id=pad_id, eos_token_id=sorted(eos_ids), **sampling_kwargs(cfg, num_samples))


# ----------------------------------------------------------------------------------------------
# The block as TRL's GRPO / RLOO fields (TRL samples for them)

# workbench `generation:` field -> TRL GRPOConfig / RLOOConfig field
GENERATION_TO_TRL = (
    ("num_samples", "num_generations"),
    ("max_new_tokens", "max_completion_length"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
)


def trl_generation_fields(generation: GenerationConfig, train: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(TRL fields taken from `generation:`, problems). A TRL field the recipe's `train:` sets is left to it;
    a `generation:` value changed from its default that disagrees with it is a problem."""
    defaults = GenerationConfig()
    fields: dict[str, Any] = {}
    problems: list[str] = []
    for ours, theirs in GENERATION_TO_TRL:
        value = getattr(generation, ours)
        if theirs not in train:
            fields[theirs] = value
        elif value != getattr(defaults, ours) and value != train[theirs]:
            problems.append(
                f"`generation.{ours}` ({value}) and `train.{theirs}` ({train[theirs]}) both set the same sampling setting; "
                f"keep one (`generation.{ours}` is shared with rejection sampling, PPO and evaluation)"
            )
    if fields.get("temperature", train.get("temperature", 1.0)) <= 0:
        problems.append("GRPO / RLOO compare several sampled completions per prompt: the temperature must be > 0")
    return fields, problems
