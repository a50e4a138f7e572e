"""Recipe checks: typed conversion that names every bad key (with the closest valid one), the
`train:` section against the method's real config class, and checks across fields."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from typing import Any, Literal

from workbench.config.methods import METHODS
from workbench.config.schema import WORKBENCH_OWNED_TRAIN_KEYS, Recipe

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
            one = f"; did you mean [{value}]?" if isinstance(value, (str, int, float)) else ""  # a list of the one value
            problems.append(f"`{where}` must be a list, got {value!r}{one}")
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
# Train section


def train_config_class(method: str) -> type:
    module, name = METHODS[method].train_config
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
    """Validate `train:` keys and simple types against the method's real config class.

    Importing that class costs seconds (trl -> transformers -> peft -> torch), and the answer is a
    pure function of (method, train, installed versions), so it is memoised on disk (cache.memo_json).
    """
    from workbench.cache import memo_json

    def compute() -> list[Any]:
        found: list[str] = []
        return [_check_train_section(method, train, found), found]

    checked, found = memo_json("recipe-checks", ["train", method, train], compute)
    problems.extend(found)
    return checked


def plain_train_defaults(method: str) -> dict[str, Any]:
    """The method config class's defaults as plain YAML values (enums by value), memoised like the check."""
    from workbench.cache import memo_json

    def compute() -> dict[str, Any]:
        return {k: plain_value(v) for k, v in train_field_defaults(train_config_class(method)).items()}

    return memo_json("recipe-checks", ["defaults", method], compute)


def plain_value(value: Any) -> Any:
    """YAML-safe scalar view of enum-like defaults."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    return getattr(value, "value", str(value))


def _check_train_section(method: str, train: dict[str, Any], problems: list[str]) -> dict[str, Any]:
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
        if src.synthetic is not None and src.synthetic.topics_per_prompt not in (1, 2):
            problems.append(
                f"`data.sources.{i}.synthetic.topics_per_prompt` must be 1 or 2, got {src.synthetic.topics_per_prompt}"
            )
        if src.weight <= 0:
            problems.append(f"`data.sources.{i}.weight` must be > 0, got {src.weight}")
        if src.label is not None and src.format not in ("labeled-pair", "auto"):
            problems.append(f"`data.sources.{i}.label` only applies to `format: labeled-pair`")
    if recipe.keep_checkpoints is not None and recipe.keep_checkpoints < 0:
        problems.append(
            f"`keep_checkpoints` must be 0 or more (the newest N kept after the run completes; unset keeps all), got {recipe.keep_checkpoints}"
        )
    if not 0.0 <= recipe.data.eval_split < 1.0:
        problems.append(f"`data.eval_split` must be in [0, 1), got {recipe.data.eval_split}")
    if recipe.data.max_prompt_length is not None and recipe.data.max_prompt_length >= recipe.data.max_length:
        problems.append("`data.max_prompt_length` must be smaller than `data.max_length` (responses need room)")
    if METHODS[recipe.method].needs_reward:
        rm = recipe.reward_model
        if rm is None or (rm.name_or_path is None) == (rm.function is None):
            problems.append(f"`reward_model` needs exactly one of `name_or_path` or `function` for method {recipe.method}")
    if recipe.model.lora is not None and recipe.method in METHODS:
        problems.extend(check_lora(recipe.model.lora))
    return problems


def check_lora(lora: dict[str, Any]) -> list[str]:
    """`model.lora` keys and types against peft's LoraConfig (import memoised like the train check)."""
    from workbench.cache import memo_json

    return memo_json("recipe-checks", ["lora", lora], lambda: _check_lora(lora))


def _check_lora(lora: dict[str, Any]) -> list[str]:
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
