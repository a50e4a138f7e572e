"""`workbench validate`: resolve and check everything a run needs, without loading weights.

Reports every problem it finds: recipe keys, the `train:` values as the real TRL /
`TrainingArguments` class checks them, precision against this machine, the accelerate /
DeepSpeed config against the recipe, reward functions and reward models, and every row of every
data source (read fully, streaming). `train` runs the same checks before anything starts.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.cache import memo_json, path_fingerprint
from workbench.config import (
    METHODS,
    Recipe,
    RewardModelConfig,
    dump_yaml,
    load_recipe,
    plain_train_defaults,
    resolved_dict,
)
from workbench.data.schema import Reject
from workbench.errors import RecipeError, WorkbenchError
from workbench.tracking import wandb_mode_source, wandb_problems


def path_problems(recipe: Recipe) -> list[str]:
    from workbench.data.sources import looks_like_local_path
    from workbench.models import model_location_problem

    problems = []
    for i, src in enumerate(recipe.data.sources):
        if src.path and looks_like_local_path(src.path) and not Path(src.path).expanduser().exists():
            problems.append(
                f"`data.sources.{i}.path`: '{src.path}' not found (relative to {Path.cwd()}); "
                "fix the path, or name a hub dataset id (with `data_dir:` for a folder of it)"
            )
    models = [("model.name_or_path", recipe.model.name_or_path), ("reference.name_or_path", recipe.reference.name_or_path)]
    if recipe.reward_model is not None:
        models.append(("reward_model.name_or_path", recipe.reward_model.name_or_path))
    for key, value in models:
        problem = model_location_problem(value) if value else None
        if problem:
            problems.append(f"`{key}`: {problem}")
    return problems


# ----------------------------------------------------------------------------------------------
# Reward sources


def reward_function_problem(spec: str) -> str | None:
    """Why `module:function` cannot serve as a reward function f(prompts, completions, **kwargs), or None."""
    from workbench.scoring import import_function

    try:
        func = import_function(spec)
    except WorkbenchError as exc:
        return str(exc)
    except Exception as exc:  # the user's module raised while importing
        return f"reward function '{spec}': importing it raised {type(exc).__name__}: {exc}"
    try:
        inspect.signature(func).bind(["prompt"], ["completion"], completion_ids=[[0]], trainer_state=None)
    except TypeError:
        return f"{spec} cannot be called as f(prompts, completions, **kwargs); give it that signature"
    except ValueError:  # builtins without a signature: trust them
        return None
    return None


def reward_model_problem(name_or_path: str) -> str | None:
    """Why a local reward-model directory holds no sequence-classification head, or None (hub ids: at load)."""
    config = reward_model_config(name_or_path)
    if isinstance(config, str):
        return config
    architectures = (config or {}).get("architectures") or []
    if config is not None and not any(a.endswith("ForSequenceClassification") for a in architectures):
        listed = ", ".join(architectures) or "none"
        return (
            f"'{name_or_path}' is not a sequence-classification model (config.json architectures: {listed}); "
            "train one with `method: reward` or use `reward_model.function`"
        )
    return None


def reward_model_config(name_or_path: str) -> dict[str, Any] | str | None:
    """A local reward model's config.json, why it cannot be read, or None (a hub id, or a missing directory
    reported by path_problems)."""
    config = Path(name_or_path).expanduser() / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return f"'{config}' is not readable JSON ({exc})"


def reward_sources(recipe: Recipe) -> list[tuple[str, RewardModelConfig]]:
    found = [("reward_model", recipe.reward_model), ("eval.reward_model", recipe.eval.reward_model)]
    found.append(("eval.gold_reward", recipe.eval.gold_reward))
    return [(key, cfg) for key, cfg in found if cfg is not None]


def reward_problems(recipe: Recipe) -> list[str]:
    problems = []
    for key, cfg in reward_sources(recipe):
        if cfg.function:
            problem = reward_function_problem(cfg.function)
            if problem:
                problems.append(f"`{key}.function`: {problem}")
        if cfg.name_or_path:
            problem = reward_model_problem(cfg.name_or_path)
            if problem:
                problems.append(f"`{key}.name_or_path`: {problem}")
            config = reward_model_config(cfg.name_or_path)
            if not problem and cfg.normalize and isinstance(config, dict) and config.get("reward_std") is None:
                from workbench.scoring import missing_reward_stats

                problems.append(missing_reward_stats(key, cfg.name_or_path))
    return problems


# ----------------------------------------------------------------------------------------------
# Hardware and the accelerate config


def accelerate_problems(recipe: Recipe, accelerate_config: str | None) -> list[str]:
    """Recipe settings the accelerate / DeepSpeed config (or this machine) cannot run."""
    from workbench.launch import deepspeed_settings, read_accelerate_config

    problems: list[str] = []  # QLoRA's own needs (GPU, bitsandbytes, LoRA) are in method_checks' list
    quant = recipe.model.quantization
    if accelerate_config is None:
        return problems
    acc = read_accelerate_config(accelerate_config)
    if acc.get("distributed_type") == "DEEPSPEED":
        ds = deepspeed_settings(acc, Path(accelerate_config).parent)
        stage = ds.get("zero_stage", (ds.get("zero_optimization") or {}).get("stage"))
        if quant is not None and str(stage) == "3":
            problems.append(
                f"`model.quantization: {quant}` cannot be used with DeepSpeed ZeRO stage 3 ({accelerate_config}): "
                "quantized weights cannot be partitioned; use a ZeRO-2 or DDP config"
            )
    return problems


# ----------------------------------------------------------------------------------------------
# Data: every row, streaming


@dataclass
class SourceScan:
    label: str
    rows: int = 0
    valid: int = 0
    first_invalid: Reject | None = None
    invalid: int = 0
    ties: int = 0
    example: Any = None


@dataclass
class DataScan:
    kind: str
    sources: list[SourceScan] = field(default_factory=list)

    def describe(self) -> str:
        rows, valid = sum(s.rows for s in self.sources), sum(s.valid for s in self.sources)
        ties = sum(s.ties for s in self.sources)
        per = "; ".join(f"{s.label}: {s.valid}/{s.rows}" for s in self.sources)
        tied = f", {ties} annotator ties dropped" if ties else ""
        return f"data: {rows} rows read, {valid} valid, {rows - valid - ties} invalid{tied} ({self.kind} records) [{per}]"


def scan_data(recipe: Recipe, kind: str) -> tuple[DataScan, list[str]]:
    """Read every row of every source once, keeping counts and the first invalid row (bounded memory)."""
    from workbench.data.sources import load_source

    scan, problems = DataScan(kind), []
    for index, src in enumerate(recipe.data.sources):
        entry = SourceScan(src.path if src.path is not None else f"synthetic:{src.synthetic.task}")  # type: ignore[union-attr]
        scan.sources.append(entry)
        try:
            for item in load_source(src, index, kind):
                entry.rows += 1
                if isinstance(item, Reject) and item.kind == "tie":
                    entry.ties += 1  # annotators tied and the recipe drops ties: counted, not an error
                elif isinstance(item, Reject):
                    entry.invalid += 1
                    entry.first_invalid = entry.first_invalid or item
                else:
                    entry.valid += 1
                    entry.example = entry.example or item
        except WorkbenchError as exc:
            problems.append(str(exc))
            continue
        bad = entry.first_invalid
        if bad is not None and recipe.data.on_invalid == "error":
            more = f" ({entry.invalid - 1} more invalid rows in this source)" if entry.invalid > 1 else ""
            problems.append(
                f"{bad.location()}: {bad.reason}{more}. Fix the data, or set `data.on_invalid: drop` "
                "to keep the good rows and write the bad ones to OUTPUT_DIR/data/rejects.jsonl."
            )
        elif entry.valid == 0:
            problems.append(f"`data.sources.{index}` ({entry.label}) has no valid {kind} row")
    return scan, problems


def example_text(recipe: Recipe, scan: DataScan) -> str:
    """The first valid record, tokenized and truncated as training will see it."""
    from workbench.data.formatting import describe_pair, tokenize_pair, tokenize_prompt, tokenize_sft
    from workbench.data.pipeline import tokenization_settings
    from workbench.models import load_tokenizer

    item = next((s.example for s in scan.sources if s.example is not None), None)
    if item is None:
        return "no valid record to show"
    tokenizer = load_tokenizer(recipe.model)
    settings = tokenization_settings(recipe.data)
    where = f"({item.source}:{item.line})"
    if scan.kind == "preference":
        text = f"example pair {where}:\n" + describe_pair(tokenizer, tokenize_pair(tokenizer, item.row, settings))
    elif scan.kind == "sft":
        sft = tokenize_sft(tokenizer, item.row, settings)
        text = (
            f"example {where}: prompt {len(sft.prompt_ids)} tokens, completion {len(sft.completion_ids)} tokens (in loss): "
            f"{tokenizer.decode(sft.completion_ids)!r}"
        )
    else:
        prompt = tokenize_prompt(tokenizer, item.row["prompt"], settings.max_prompt_length)
        text = f"example prompt {where}: {len(prompt.prompt_ids)} tokens: {tokenizer.decode(prompt.prompt_ids)!r}"
    note = template_note(tokenizer, item.row.get("prompt"))
    return f"{text}\n{note}" if note else text


def template_note(tokenizer: Any, prompt: Any) -> str | None:
    """Say when the model's chat template is not applied to this prompt (plain text: every CSV row, and text
    fields in JSON), or when message lists meet a model without one: the example then trains unlike a chat."""
    from workbench.data.formatting import has_chat_template

    if isinstance(prompt, str) and has_chat_template(tokenizer):
        return (
            "note: this prompt is plain text, so it is tokenized as it is, without the model's chat template (only "
            "message lists, such as conversational JSON Lines, are templated); give the rows as messages to train "
            "in the chat format"
        )
    if isinstance(prompt, list) and not has_chat_template(tokenizer):
        return "note: the model has no chat template, so these messages are rendered as plain 'User: ...' / 'Assistant: ...' text"
    return None


def models_key(recipe: Recipe) -> list[Any]:
    names = [recipe.model.name_or_path, recipe.reference.name_or_path, getattr(recipe.reward_model, "name_or_path", None)]
    return [[name, path_fingerprint(Path(name).expanduser())] if name else None for name in names]


def plan_inputs(recipe: Recipe) -> dict[str, Any]:
    """The recipe sections the memory plan reads (of `data:` only the lengths; not tracking, evaluation or seed)."""
    from workbench.data.pipeline import tokenization_settings

    resolved = resolved_dict(recipe)
    keep = ("method", "model", "reference", "reward_model", "train", "generation")
    return {**{k: resolved[k] for k in keep}, "data": dataclasses.asdict(tokenization_settings(recipe.data))}


def memoised_example_text(recipe: Recipe, scan: DataScan) -> str:
    """example_text, memoised on the record, the model's files and the recipe (loading a tokenizer imports transformers)."""
    item = next((s.example for s in scan.sources if s.example is not None), None)
    record = None if item is None else [item.source, item.line, item.row]
    from workbench.data.pipeline import tokenization_settings

    settings = dataclasses.asdict(tokenization_settings(recipe.data))
    key = ["example", scan.kind, record, settings, dataclasses.asdict(recipe.model), models_key(recipe)]
    return memo_json("recipe-checks", key, lambda: example_text(recipe, scan))


# ----------------------------------------------------------------------------------------------
# All checks


def library_train_problems(method: str, train: dict[str, Any]) -> list[str]:
    """The `train:` values as TRL / transformers check them when the run builds its config object.

    That object's class costs seconds to import, and its checks are a pure function of (method, train,
    installed versions, this machine's GPUs), so the verdict is memoised on disk (cache.memo_json);
    under `accelerate launch` the process state takes part too, so there it is always built.
    """
    import os

    from workbench.config.train_args import build_train_args

    def compute() -> list[str]:
        with tempfile.TemporaryDirectory() as scratch:  # TrainingArguments needs an output_dir; it writes nothing there
            return build_train_args(method, train, scratch)[1]

    if "LOCAL_RANK" in os.environ:
        return compute()
    return memo_json("recipe-checks", ["train-args", method, train], compute)


def processes_of(recipe: Recipe, accelerate_config: str | None) -> int:
    """The processes the run will have: the accelerate config's, or this launch's (1 for a plain run)."""
    from workbench.launch import global_batch

    try:
        return global_batch(recipe.train, {}, accelerate_config).processes
    except WorkbenchError:  # an unreadable config: reported by check_recipe
        return 1


def check_recipe(recipe: Recipe, accelerate_config: str | None = None, example: bool = True) -> tuple[list[str], list[str]]:
    """(report sections, problems): every check that needs no model weights."""
    from workbench.launch import global_batch

    problems = path_problems(recipe)
    sections: list[str] = []
    train = recipe.train
    processes = processes_of(recipe, accelerate_config)
    spec = METHODS[recipe.method]
    if spec.sampling == "trl":  # TRL's checks see the sampling settings mapped from `generation:`
        from workbench.online import TRL_GROUP_MESSAGES, trl_one_process_fields
        from workbench.sampling.settings import trl_generation_fields

        train = {**trl_generation_fields(recipe.generation, recipe.train)[0], **recipe.train}
        train = trl_one_process_fields(train, plain_train_defaults(recipe.method), processes)
        found = library_train_problems(recipe.method, train)  # whole groups: method_problems says it, for `processes`
        problems.extend(p for p in found if not any(m in p for m in TRL_GROUP_MESSAGES))
    else:
        problems.extend(library_train_problems(recipe.method, train))
    try:
        gb = global_batch(recipe.train, plain_train_defaults(recipe.method), accelerate_config)
        source = f" (from {accelerate_config})" if accelerate_config else ""
        if spec.produces_model:  # a method that trains nothing has no batch to speak of
            sections.append(f"global batch{source}: {gb.describe()}")
            problems.extend(gb.warnings)
        problems.extend(accelerate_problems(recipe, accelerate_config))
    except WorkbenchError as exc:
        problems.append(str(exc))
    if spec.checks_declared_choices:  # TRL's own checks, and GRPO / RLOO's completions per step
        from workbench.online import validate_trl_method

        key = ["trl-method", resolved_dict(recipe), processes]
        lines, more = memo_json("recipe-checks", key, lambda: list(validate_trl_method(recipe, processes)))
        sections.extend(lines)
        problems.extend(more)
    from workbench.method_checks import method_problems
    from workbench.sampling.settings import eval_sampling_problems

    problems.extend(method_problems(recipe, processes))  # the list the method refuses with
    problems.extend(reward_problems(recipe))
    problems.extend(eval_sampling_problems(recipe.eval.generation))  # the sentences PPO's checks use, for `eval.generation`
    if not any(p.startswith("`data.sources") for p in problems):
        scan, data_problems = scan_data(recipe, spec.data_kind)
        sections.append(scan.describe())
        problems.extend(data_problems)
        if example and spec.data_kind != "unpaired" and not data_problems and not any(p.startswith("`model.") for p in problems):
            try:
                sections.append(memoised_example_text(recipe, scan))
            except WorkbenchError as exc:
                problems.append(str(exc))
    return sections, list(dict.fromkeys(problems))  # a problem two checks find is listed once


def preflight(recipe: Recipe, source: str = "recipe", accelerate_config: str | None = None) -> None:
    """`train`'s (and `launch`'s) first step: the checks of `validate` (no example shown); one RecipeError listing every problem."""
    _, problems = check_recipe(recipe, accelerate_config, example=False)
    problems += wandb_problems(recipe.tracking.mode)
    if problems:
        raise RecipeError(source, problems)


def validate_comparison(path: str, overrides: Sequence[str], show_recipe: bool = False) -> tuple[str, list[str]]:
    """A comparison recipe (`stages:`): the comparison's own keys, then every stage's composed recipe
    (first seed) through the same checks as a single run. A stage reading an earlier stage's model is
    checked on the model that chain starts from; paths that earlier stages will write are not problems."""
    from workbench.comparison.recipe import data_from_file, load_comparison, stage_recipe
    from workbench.config import recipe_from_dict

    try:
        comparison = load_comparison(path, overrides)
    except RecipeError as exc:
        return "", exc.problems  # the verdict and the problems say it all
    seed = comparison.seeds[0]
    seed_dir = comparison.output_dir / f"seed-{seed}"
    future = [str(seed_dir / name / "model") for name in comparison.stages]  # and the data files `data_from` reads
    future += [
        str(seed_dir / s.data_from / written) for s in comparison.stages.values() if (written := data_from_file(comparison, s))
    ]
    sections = [f"comparison {comparison.name}: {len(comparison.stages)} stages, seeds {comparison.seeds}"]
    problems: list[str] = []
    for stage in comparison.stages.values():
        data = stage_recipe(comparison, stage, seed)
        origin = stage
        while origin.model_from:  # the model this stage's chain starts from
            origin = comparison.stages[origin.model_from]
        if origin is not stage:
            start = (stage_recipe(comparison, origin, seed).get("model") or {}).get("name_or_path")
            data.setdefault("model", {})["name_or_path"] = start
        try:
            recipe = recipe_from_dict(data, source=f"stage {stage.name}")
        except RecipeError as exc:
            problems.extend(f"stages.{stage.name}: {p}" for p in exc.problems)
            continue
        found, stage_problems = check_recipe(recipe, stage.accelerate_config)
        stage_problems = [p for p in stage_problems if not any(f in p for f in future)]
        useful = [line for line in found if not line.startswith("example")]
        sections.append(f"\nstage {stage.name} ({recipe.method}): {'OK' if not stage_problems else 'NOT valid'}")
        sections.extend(f"  {line}" for text in useful for line in text.splitlines())
        if show_recipe:
            sections.extend(f"  {line}" for line in recipe_text(recipe).splitlines())
        problems.extend(f"stages.{stage.name}: {p}" for p in stage_problems)
    return "\n".join(sections), problems


def recipe_text(recipe: Recipe) -> str:
    """The resolved recipe (every default filled in), under its heading, for `validate --show-recipe`."""
    return "resolved recipe:\n" + dump_yaml(resolved_dict(recipe)).rstrip()


def validate(
    path: str, overrides: Sequence[str], accelerate_config: str | None, show_recipe: bool = False
) -> tuple[str, list[str]]:
    """(printable report, problems). Problems include everything found, not just the first; the report ends with
    the resolved recipe when `show_recipe`."""
    from workbench.config import read_yaml

    try:
        if "stages" in read_yaml(path):
            return validate_comparison(path, overrides, show_recipe)
    except RecipeError as exc:
        return "", exc.problems
    try:
        recipe = load_recipe(path, overrides)
    except RecipeError as exc:
        return "", exc.problems
    sections, problems = check_recipe(recipe, accelerate_config)
    problems += wandb_problems(recipe.tracking.mode)
    sections.append("W&B: {} ({})".format(*wandb_mode_source(recipe.tracking.mode)))
    from workbench.plan import plan_total_line

    if path_problems(recipe):  # a hub model's plan would ask the network first (retrying for long without one)
        sections.append("memory plan: once the missing paths above are fixed")
    else:
        config = [accelerate_config, path_fingerprint(accelerate_config)] if accelerate_config else None
        key = ["plan", plan_inputs(recipe), models_key(recipe), config]
        sections.append(memo_json("recipe-checks", key, lambda: plan_total_line(recipe, accelerate_config)))
    sections.append(
        "\n" + recipe_text(recipe) if show_recipe else "(the resolved recipe, every default filled in: --show-recipe)"
    )
    return "\n".join(sections), problems
