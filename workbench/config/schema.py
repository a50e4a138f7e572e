"""Recipe schema: the typed sections of a recipe, every default with its help text.

Declarations only (no loading, no checks), so sections other engineers add are one-hunk merges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from workbench.config.methods import METHOD_NAMES

# `train:` keys the workbench owns, with where the user sets them instead.
WORKBENCH_OWNED_TRAIN_KEYS = {
    "output_dir": "set the top-level `output_dir:`; checkpoints go to OUTPUT_DIR/checkpoints",
    "report_to": "tracking is set in the `tracking:` section (W&B + metrics.jsonl)",
    "run_name": "set `tracking.name`",
    "max_length": "set `data.max_length`: the data layer tokenizes and truncates once for every method",
    "max_prompt_length": "set `data.max_prompt_length`",
    "truncation_mode": "the data layer truncates (keeping the end of long prompts)",
    "seed": "set the top-level `seed:`",
}


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class ModelConfig:
    """The policy (or, for `method: reward`, the reward model backbone) to train."""

    name_or_path: str = _help("Local directory or hub id of the model to train.", default="")
    revision: str | None = _help("Hub revision (branch, tag or commit) when loading by id.", default=None)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = _help(
        "Weights dtype. `auto` uses the checkpoint's own dtype; a differing explicit dtype warns.",
        default="auto",
    )
    trust_remote_code: bool = _help("Run model code shipped with a hub checkpoint. Off by default.", default=False)
    attn_implementation: str | None = _help("Attention kernel: eager, sdpa, flash_attention_2 (None: default).", default=None)
    lora: dict[str, Any] | None = _help(
        "peft `LoraConfig` fields (r, lora_alpha, lora_dropout, target_modules, ...). Unset: full fine-tuning.",
        default=None,
    )
    quantization: Literal["4bit", "8bit"] | None = _help(
        "QLoRA base-model quantization (needs the `qlora` extra and a CUDA GPU).", default=None
    )
    merge_lora_on_export: bool = _help(
        "Also write the LoRA adapter merged into the base model under model/merged.", default=False
    )


@dataclass
class ReferenceConfig:
    """The frozen reference policy for DPO / PPO / KL measurements."""

    name_or_path: str | None = _help(
        "Reference model; unset: a frozen copy of `model` (or the base with adapters disabled under LoRA).",
        default=None,
    )
    precompute_log_probs: bool = _help(
        "Compute reference log-probs once before training (and cache them on disk) instead of keeping the model.",
        default=False,
    )


@dataclass
class RewardModelConfig:
    """Where rewards come from (rejection sampling, PPO, evaluation)."""

    name_or_path: str | None = _help("Sequence-classification reward model (directory or hub id).", default=None)
    function: str | None = _help(
        "Python reward function `module:function`, called as f(prompts, completions, **kwargs) -> list[float].",
        default=None,
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = _help("Reward model dtype.", default="auto")
    normalize: bool = _help("Normalize scores with the mean/std stored in the reward model config.", default=False)
    batch_size: int = _help("Sequences scored per forward pass.", default=16)


@dataclass
class LabelSpec:
    """How a labeled-pair row maps to (prompt, chosen, rejected)."""

    prompt: str = _help("Column holding the prompt.", default="input")
    first: str = _help("Column holding the first output.", default="output_1")
    second: str = _help("Column holding the second output.", default="output_2")
    label: str | list[str] = _help(
        "Column naming the better output, or a list of columns (one per annotator) aggregated by majority.",
        default="label",
    )
    first_value: Any = _help("Label value meaning the first output is better (may be a JSON boolean).", default=1)
    second_value: Any = _help("Label value meaning the second output is better (may be a JSON boolean).", default=2)
    tie_value: Any = _help("Label value meaning a tie (PandaLM uses 0); unset: no label means a tie.", default=None)
    on_tie: Literal["drop", "error"] = _help(
        "A row whose annotators tie (no strict majority, or a majority for `tie_value`): `drop` leaves it out, "
        "counted in the data report and kept in rejects.jsonl; `error` makes it an invalid row (see `data.on_invalid`).",
        default="drop",
    )


@dataclass
class SyntheticSpec:
    """A generated preference task whose ground truth is a known rule (offline demos and tests)."""

    task: Literal["vowels"] = _help("The rule: `vowels` prefers the response with the higher share of vowels.", default="vowels")
    num_pairs: int = _help("Number of pairs to generate.", default=512)
    seed: int = _help("Generator seed.", default=0)
    topics_per_prompt: int = _help(
        "Topics named in each prompt: 1 gives 80 distinct prompts, 2 gives 1,520 (enough held-out prompts for evaluation).",
        default=1,
    )


@dataclass
class SourceConfig:
    """One input dataset."""

    path: str | None = _help(
        "A .jsonl/.json/.parquet/.csv file (optionally .gz), a `save_to_disk` directory, or a hub id. "
        "Relative paths are resolved from the current directory.",
        default=None,
    )
    synthetic: SyntheticSpec | None = _help("Generate the data instead of reading `path`.", default=None)
    format: Literal["auto", "preference", "conversational", "hh-rlhf", "labeled-pair", "sft", "prompt", "unpaired"] = _help(
        "Row layout. `auto` detects it from the columns. `sft`: (prompt, completion); `prompt`: prompts only; "
        "`unpaired`: (prompt, completion, label) with a true/false or 1/0 label (KTO).",
        default="auto",
    )
    columns: dict[str, str] = _help(
        "Renames applied first, canonical name -> source column, e.g. {prompt: question}.", default_factory=dict
    )
    label: LabelSpec | None = _help("Column mapping for `format: labeled-pair`.", default=None)
    prompt_template: str | None = _help(
        'Build the prompt from several columns, e.g. "{instruction}\\n\\n{input}" (Python format fields); '
        "the result replaces the prompt column of the layout.",
        default=None,
    )
    system_prompt: str | None = _help(
        "A system message put first in every prompt of this source (replacing one the row has); a plain-text prompt "
        "becomes the user turn after it, so the prompt is chat-templated. Unset: prompts as the rows give them.",
        default=None,
    )
    prompt_turns: Literal["all", "first"] = _help(
        "`first`: a chat prompt keeps its system message and its first user turn only (the later turns of a dialogue, "
        "written with another model's answers, are dropped); for methods that read prompts only, since a pair's "
        "responses answer its last turn. `all`: the prompt as the row gives it.",
        default="all",
    )
    weight: float = _help(
        "Mixture weight: the share of this source's training rows used (e.g. 0.5 = half, 2.0 = each row twice).",
        default=1.0,
    )
    split: str = _help("Split to read from a hub dataset or a saved DatasetDict.", default="train")
    name: str | None = _help("Hub dataset configuration name.", default=None)
    data_dir: str | None = _help(
        "Hub dataset: the folder of the dataset repository to read (`datasets.load_dataset`'s data_dir), "
        "e.g. helpful-base of Anthropic/hh-rlhf.",
        default=None,
    )


@dataclass
class DataConfig:
    """The shared data layer: every method reads its data through it."""

    sources: list[SourceConfig] = _help("Input datasets (at least one).", default_factory=list)
    eval_split: float = _help("Share of pairs held out for evaluation, chosen by a stable hash.", default=0.05)
    split_by: Literal["pair", "prompt"] = _help(
        "Hash key for the split: `pair` (the pair id) or `prompt` (all pairs of a prompt land together).",
        default="pair",
    )
    on_invalid: Literal["error", "drop"] = _help(
        "`error`: stop at the first bad row naming file:line; `drop`: keep going and write rejects.jsonl.",
        default="error",
    )
    dedup: Literal["none", "exact", "near"] = _help("Duplicate removal within the data and across splits.", default="exact")
    near_dup_threshold: float = _help("Jaccard similarity above which `near` dedup calls two pairs duplicates.", default=0.9)
    max_length: int = _help("Maximum tokens of prompt + response.", default=1024)
    max_prompt_length: int | None = _help(
        "Maximum prompt tokens (the start of long prompts is cut). Unset: half of max_length.", default=None
    )
    seed: int | None = _help("Seed for mixture sampling; unset: the recipe seed.", default=None)


@dataclass
class GenerationConfig:
    """Sampling settings shared by rejection sampling, PPO rollouts and evaluation."""

    backend: Literal["transformers", "vllm"] = _help("Generation backend.", default="transformers")
    num_samples: int = _help("Completions per prompt.", default=4)
    max_new_tokens: int = _help("Maximum new tokens per completion.", default=64)
    temperature: float = _help("Sampling temperature (0: greedy).", default=1.0)
    top_p: float = _help("Nucleus sampling threshold.", default=1.0)
    top_k: int = _help("Top-k sampling (0: off).", default=0)
    batch_size: int = _help("Prompts per generation batch.", default=16)
    seed: int | None = _help("Sampling seed; unset: the recipe seed.", default=None)


def _eval_generation() -> GenerationConfig:
    return GenerationConfig(num_samples=1, max_new_tokens=32, temperature=1.0, batch_size=32)


@dataclass
class EvalConfig:
    """The shared evaluation run on a trained policy: the same metrics, prompts and sampling for every method."""

    num_prompts: int = _help("Held-out prompts (distinct, from the data's eval split) to generate for.", default=64)
    samples_per_prompt: int = _help("Responses sampled per prompt (more: tighter estimates).", default=1)
    num_pairs: int = _help("Held-out preference pairs for `preference_accuracy`.", default=256)
    batch_size: int = _help("Sequences per forward pass for log-probabilities.", default=16)
    generation: GenerationConfig = _help(
        "Sampling for evaluation, fixed across methods (temperature 1: the KL is estimated on the policy's own samples).",
        default_factory=_eval_generation,
    )
    seed: int = _help("Sampling seed of the evaluation (the same for every policy and the baseline).", default=1234)
    baseline: str | None = _help("Baseline policy for the win rate (model directory); unset: the reference.", default=None)
    reference: str | None = _help(
        "Reference for `kl_to_reference` and the implicit reward; unset: the run's reference.", default=None
    )
    reward_model: RewardModelConfig | None = _help(
        "The pipeline's reward model for `reward_mean`; unset: the recipe's `reward_model`.", default=None
    )
    gold_reward: RewardModelConfig | None = _help(
        "Independent scorer for `gold_reward_mean` (a reward model or a function).", default=None
    )
    kl_warning: float = _help(
        "KL to the reference (nats per response) above which a policy is flagged `kl_blowup` in the comparison report.",
        default=20.0,
    )
    judge: Literal["gold", "reward"] = _help(
        "Scorer of the win rate: `gold` (the independent scorer, falling back to the reward model) or `reward`.", default="gold"
    )


@dataclass
class TrackingConfig:
    """Weights & Biases plus the local metrics log."""

    project: str = _help("W&B project.", default="workbench")
    entity: str | None = _help("W&B entity (team or user).", default=None)
    group: str | None = _help("W&B group (comparisons set it).", default=None)
    job_type: str | None = _help("W&B job type; unset: the method name.", default=None)
    tags: list[str] = _help("W&B tags.", default_factory=list)
    name: str | None = _help("Run name; unset: the output directory's name.", default=None)
    mode: Literal["auto", "online", "offline", "disabled"] = _help(
        "W&B mode. `auto`: $WANDB_MODE if set, else online when WANDB_API_KEY is set, else offline.",
        default="auto",
    )


@dataclass
class Recipe:
    """A whole recipe. `train` holds the method's training-argument fields, checked by name."""

    method: Literal[METHOD_NAMES] = _help("Alignment method.", default="dpo")  # choices: the registry (config/methods.py)
    model: ModelConfig = _help("Model to train.", default_factory=ModelConfig)
    reference: ReferenceConfig = _help("Reference model.", default_factory=ReferenceConfig)
    reward_model: RewardModelConfig | None = _help("Reward source.", default=None)
    data: DataConfig = _help("Data.", default_factory=DataConfig)
    train: dict[str, Any] = _help("Training arguments (TRL / TrainingArguments field names).", default_factory=dict)
    generation: GenerationConfig = _help("Generation settings.", default_factory=GenerationConfig)
    eval: EvalConfig = _help("Evaluation settings.", default_factory=EvalConfig)
    tracking: TrackingConfig = _help("Tracking.", default_factory=TrackingConfig)
    output_dir: str = _help("Run directory.", default="runs/run")
    keep_checkpoints: int | None = _help(
        "Checkpoints kept once the run completed with its export in OUTPUT_DIR/model: the newest N (0: none, and "
        "the run can no longer be continued with --resume); unset: all that train.save_total_limit left.",
        default=None,
    )
    seed: int = _help("Global seed (training, splits' mixture sampling, generation).", default=42)

    @property
    def data_seed(self) -> int:
        return self.seed if self.data.seed is None else self.data.seed


def effective_max_prompt_length(data: DataConfig) -> int:
    return data.max_prompt_length if data.max_prompt_length is not None else data.max_length // 2
