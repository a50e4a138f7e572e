"""Recipe YAML -> typed dataclasses, with overrides and validation that names every bad key.

Every default lives in a dataclass field with help text. The `train:` section is validated
against the training-arguments class of the method (TRL's own config classes for the
TRL-backed methods), so users' TRL / `TrainingArguments` knowledge carries over unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from workbench.errors import RecipeError

# Method -> (module, class) of its `train:` section. A declaration, not an import of methods/.
TRAIN_CONFIG_CLASSES: dict[str, tuple[str, str]] = {
    "sft": ("trl", "SFTConfig"),
    "reward": ("trl", "RewardConfig"),
    "dpo": ("trl", "DPOConfig"),
    "rejection_sampling": ("workbench.train_configs", "RejectionSamplingConfig"),
    "ppo": ("workbench.train_configs", "PPOConfig"),
    "kto": ("trl", "KTOConfig"),
    "grpo": ("trl", "GRPOConfig"),
    "rloo": ("trl", "RLOOConfig"),
}

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
    label: str = _help("Column naming the better output.", default="label")
    first_value: Any = _help("Label value meaning the first output is better.", default=1)
    second_value: Any = _help("Label value meaning the second output is better.", default=2)


@dataclass
class SyntheticSpec:
    """A generated preference task whose ground truth is a known rule (offline demos and tests)."""

    task: Literal["vowels"] = _help("The rule: `vowels` prefers the response with the higher share of vowels.", default="vowels")
    num_pairs: int = _help("Number of pairs to generate.", default=512)
    seed: int = _help("Generator seed.", default=0)


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
    weight: float = _help(
        "Mixture weight: the share of this source's training rows used (e.g. 0.5 = half, 2.0 = each row twice).",
        default=1.0,
    )
    split: str = _help("Split to read from a hub dataset or a saved DatasetDict.", default="train")
    name: str | None = _help("Hub dataset configuration name.", default=None)


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

    method: Literal["sft", "reward", "dpo", "rejection_sampling", "ppo", "kto", "grpo", "rloo"] = _help(
        "Alignment method.", default="dpo"
    )
    model: ModelConfig = _help("Model to train.", default_factory=ModelConfig)
    reference: ReferenceConfig = _help("Reference model.", default_factory=ReferenceConfig)
    reward_model: RewardModelConfig | None = _help("Reward source.", default=None)
    data: DataConfig = _help("Data.", default_factory=DataConfig)
    train: dict[str, Any] = _help("Training arguments (TRL / TrainingArguments field names).", default_factory=dict)
    generation: GenerationConfig = _help("Generation settings.", default_factory=GenerationConfig)
    eval: EvalConfig = _help("Evaluation settings.", default_factory=EvalConfig)
    tracking: TrackingConfig = _help("Tracking.", default_factory=TrackingConfig)
    output_dir: str = _help("Run directory.", default="runs/run")
    seed: int = _help("Global seed (training, splits' mixture sampling, generation).", default=42)

    @property
    def data_seed(self) -> int:
        return self.seed if self.data.seed is None else self.data.seed


# ----------------------------------------------------------------------------------------------
# Generic typed conversion with problem collection


# Names users bring from other tools, mapped to ours when the target is a valid key there.
ALIASES = {
    "rank": "r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "lr": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "epochs": "num_train_epochs",
    "grad_accum": "gradient_accumulation_steps",
    "gradient_accumulation": "gradient_accumulation_steps",
}


def closest(name: str, choices: typing.Iterable[str]) -> str | None:
    """The valid name a typo (or another tool's name for it) most likely meant, or None."""
    choices = list(choices)
    if ALIASES.get(name) in choices:
        return ALIASES[name]
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key_message(where: str, key: str, choices: typing.Iterable[str]) -> str:
    choices = sorted(choices)
    guess = closest(key, choices)
    listed = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    hint = f"; did you mean `{guess}`?" if guess else f"; valid keys: {listed}"
    return f"unknown key `{where}{key}`{hint}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


INVALID = object()  # what `convert` returns for a value that does not fit its annotation


def convert(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check `value` against the annotation `tp`; record a problem naming `where` and return INVALID if it does not fit.

    Containers keep their valid parts, so one bad leaf never hides its siblings.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = convert(value, arg, where, trial)
            if not trial:
                return out
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:  # Optional[X]: report X's own message
            return convert(value, non_none[0], where, problems)
        problems.append(f"`{where}` must be {_type_name(tp)}, got {value!r}")
        return INVALID
    if origin is Literal:
        if value not in args:
            guess = closest(str(value), [str(a) for a in args])
            hint = f"; did you mean {guess!r}?" if guess else ""
            problems.append(f"`{where}` must be one of {', '.join(repr(a) for a in args)}, got {value!r}{hint}")
            return INVALID
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"`{where}` must be a mapping of {tp.__name__} fields, got {value!r}")
            return INVALID
        return build_dataclass(tp, value, where + ".", problems)
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"`{where}` must be a list, got {value!r}")
            return INVALID
        (item_tp,) = args or (Any,)
        items = [convert(v, item_tp, f"{where}.{i}", problems) for i, v in enumerate(value)]
        return [v for v in items if v is not INVALID]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"`{where}` must be a mapping, got {value!r}")
            return INVALID
        _, val_tp = args or (Any, Any)
        items = {k: convert(v, val_tp, f"{where}.{k}", problems) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not INVALID}
    return _convert_scalar(value, tp, where, problems)


def _convert_scalar(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    ok = True
    if tp is bool:
        ok, expected = isinstance(value, bool), "true or false"
    elif tp is int:
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif tp is float:
        ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        value = float(value) if ok else value
    elif tp is str:
        ok, expected = isinstance(value, str), "a string"
    if not ok:
        problems.append(f"`{where}` must be {expected}, got {value!r}")
        return INVALID
    return value  # types we do not check (enums, external classes) pass through


def type_hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations, class by class along the MRO; an annotation that cannot be
    resolved (external classes) leaves its field unchecked rather than every field."""
    import sys

    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        namespace = vars(sys.modules.get(klass.__module__, typing))
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            try:
                hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
            except Exception:  # an annotation this Python cannot evaluate
                hints.pop(name, None)
    return hints


def build_dataclass(cls: type, data: dict[str, Any], where: str, problems: list[str]) -> Any:
    """Build `cls` from a mapping, recording unknown keys (with the closest name) and type errors."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            problems.append(unknown_key_message(where, str(key), fields))
            continue
        converted = convert(value, hints.get(key, Any), f"{where}{key}", problems)
        if converted is not INVALID:  # an ill-typed field keeps its default, so later checks see valid types
            kwargs[key] = converted
    try:
        return cls(**kwargs)
    except Exception as exc:  # a dataclass's own __post_init__ checks
        problems.append(f"`{where.rstrip('.') or cls.__name__}`: {exc}")
        return cls()


# ----------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` -> (["a", "b", "0", "c"], YAML-typed value)."""
    if "=" not in text:
        raise RecipeError("--set", [f"`{text}` is not key=value (e.g. --set train.learning_rate=1e-5)"])
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise RecipeError("--set", [f"`{text}`: the value is not valid YAML ({exc.problem})"]) from None
    if isinstance(value, str):
        value = _coerce_float_string(value)
    return key.strip().split("."), value


def _coerce_float_string(value: str) -> Any:
    """YAML 1.1 reads `1e-5` as a string; users mean a number."""
    try:
        return float(value) if any(c in value for c in "eE") and value.strip()[0] in "+-.0123456789" else value
    except ValueError:
        return value


def apply_override(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set tree[k1][k2]... = value, creating mappings and indexing lists by number."""
    node: Any = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise RecipeError("--set", [f"`{'.'.join(keys)}`: `{key}` is not an index of a {len(node)}-item list"])
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise RecipeError("--set", [f"`{'.'.join(keys[:i])}` is not a mapping, cannot set `{key}` in it"])
        if last:
            node[key] = value
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]


def _fix_yaml_floats(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_floats(v) for v in node]
    if isinstance(node, str):
        return _coerce_float_string(node)
    return node


# ----------------------------------------------------------------------------------------------
# Train section


def train_config_class(method: str) -> type:
    module, name = TRAIN_CONFIG_CLASSES[method]
    return getattr(importlib.import_module(module), name)


def train_field_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def check_train_section(method: str, train: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Validate `train:` keys and simple types against the method's real config class."""
    cls = train_config_class(method)
    fields = {f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    hints = type_hints(cls)
    checked = {}
    for key, value in train.items():
        if key in WORKBENCH_OWNED_TRAIN_KEYS:
            problems.append(f"`train.{key}` is set by the workbench: {WORKBENCH_OWNED_TRAIN_KEYS[key]}")
            continue
        if key not in fields:
            problems.append(unknown_key_message("train.", key, fields) + f" (fields of {cls.__module__}.{cls.__name__})")
            continue
        converted = convert(value, hints.get(key, Any), f"train.{key}", problems)
        if converted is not INVALID:
            checked[key] = converted
    return checked


# ----------------------------------------------------------------------------------------------
# Loading


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), ["recipe file not found; pass the path to a .yaml recipe"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise RecipeError(str(path), [f"not valid YAML at {where}: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(str(path), ["a recipe must be a mapping of sections (method, model, data, train, ...)"])
    return data


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Build and validate a Recipe; raise one RecipeError listing every problem."""
    problems: list[str] = []
    data = _fix_yaml_floats(data)
    train = data.get("train") or {}
    recipe = build_dataclass(Recipe, {k: v for k, v in data.items() if k != "train"}, "", problems)
    if not isinstance(train, dict):
        problems.append("`train` must be a mapping of training-argument fields")
    elif recipe.method in TRAIN_CONFIG_CLASSES:
        recipe.train = check_train_section(recipe.method, train, problems)
    problems.extend(cross_checks(recipe))
    if problems:
        raise RecipeError(source, problems)
    return recipe


def cross_checks(recipe: Recipe) -> list[str]:
    """Checks that involve several fields."""
    problems = []
    if not recipe.model.name_or_path:
        problems.append("`model.name_or_path` is required: a model directory or hub id")
    if not recipe.data.sources:
        problems.append("`data.sources` needs at least one source, e.g. [{path: data.jsonl}]")
    for i, src in enumerate(recipe.data.sources):
        if (src.path is None) == (src.synthetic is None):
            problems.append(f"`data.sources.{i}` needs exactly one of `path` or `synthetic`")
        if src.weight <= 0:
            problems.append(f"`data.sources.{i}.weight` must be > 0, got {src.weight}")
        if src.label is not None and src.format not in ("labeled-pair", "auto"):
            problems.append(f"`data.sources.{i}.label` only applies to `format: labeled-pair`")
    if not 0.0 <= recipe.data.eval_split < 1.0:
        problems.append(f"`data.eval_split` must be in [0, 1), got {recipe.data.eval_split}")
    if recipe.data.max_prompt_length is not None and recipe.data.max_prompt_length >= recipe.data.max_length:
        problems.append("`data.max_prompt_length` must be smaller than `data.max_length` (responses need room)")
    if recipe.method in ("rejection_sampling", "ppo", "grpo", "rloo"):
        rm = recipe.reward_model
        if rm is None or (rm.name_or_path is None) == (rm.function is None):
            problems.append(f"`reward_model` needs exactly one of `name_or_path` or `function` for method {recipe.method}")
    if recipe.model.lora is not None and recipe.method in TRAIN_CONFIG_CLASSES:
        problems.extend(check_lora(recipe.model.lora))
    return problems


def check_lora(lora: dict[str, Any]) -> list[str]:
    from peft import LoraConfig

    problems: list[str] = []
    fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    for key, value in lora.items():
        if key == "task_type":
            problems.append("`model.lora.task_type` is set by the workbench from the method")
        elif key not in fields:
            problems.append(unknown_key_message("model.lora.", key, fields))
        else:
            convert(value, type_hints(LoraConfig).get(key, Any), f"model.lora.{key}", problems)
    return problems


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read a recipe file, apply `--set` overrides, validate, return the typed recipe."""
    data = read_yaml(path)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    return recipe_from_dict(data, source=str(path))


# ----------------------------------------------------------------------------------------------
# Resolved view and effective values


def effective_max_prompt_length(data: DataConfig) -> int:
    return data.max_prompt_length if data.max_prompt_length is not None else data.max_length // 2


def resolved_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe with every default filled in (train: the method class's defaults + overrides)."""
    out = dataclasses.asdict(recipe)
    train = {}
    if recipe.method in TRAIN_CONFIG_CLASSES:
        train = {
            k: v
            for k, v in train_field_defaults(train_config_class(recipe.method)).items()
            if k not in WORKBENCH_OWNED_TRAIN_KEYS
        }
    train.update(recipe.train)
    out["train"] = {k: _plain(v) for k, v in sorted(train.items())}
    return out


def _plain(value: Any) -> Any:
    """YAML-safe scalar view of enum-like defaults."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return getattr(value, "value", str(value))


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
