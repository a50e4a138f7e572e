"""The `train:` section checked by the real config class: build the TRL / `TrainingArguments` object
the run will build, so the library's own checks run at validate time, and turn each failure into
one sentence naming the recipe key.

Imports trl / transformers (seconds): only `validate` and `train` call it, never `--help`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from workbench.config.checks import closest, train_config_class

# Fields shared by every run's arguments (methods/hf.py sets the same ones; values here only need to be valid).
RUN_FIELDS: dict[str, Any] = {"report_to": [], "disable_tqdm": True, "logging_steps": 10, "save_strategy": "steps"}

# Values no training run can use, which TRL / transformers accept at construction and fail on later.
POSITIVE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
NON_NEGATIVE = ("learning_rate", "weight_decay", "warmup_steps", "max_grad_norm", "num_train_epochs")


def hardware_precision() -> dict[str, bool]:
    """What this machine can train in: bf16 / fp16 need a CUDA GPU (bf16 one that supports it)."""
    import torch

    cuda = torch.cuda.is_available()
    return {"cuda": cuda, "bf16": bool(cuda and torch.cuda.is_bf16_supported()), "fp16": cuda}


def allowed_values(cls: type, name: str) -> list[str] | None:
    """Choices a config class documents in a field's help ("Possible values are: `'a'`, `'b'`") but
    does not check itself (TRL's `loss_type` fails only inside the loss). None when it lists none."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            text = str(f.metadata.get("help", ""))
            if "Possible values are" not in text:
                return None
            listed = text.split("Possible values are", 1)[1].split(". ", 1)[0]
            return re.findall(r"`'([^'`]+)'`", listed) or None
    return None


def value_problems(cls: type, train: dict[str, Any], hardware: dict[str, bool]) -> list[str]:
    """Checks of values the class accepts at construction but a run cannot use."""
    problems = []
    for key in POSITIVE:
        value = train.get(key)
        if isinstance(value, int) and value < 1:
            problems.append(f"`train.{key}: {value}` must be at least 1")
    for key in NON_NEGATIVE:
        value = train.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            problems.append(f"`train.{key}: {value}` must not be negative")
    for key, value in train.items():
        choices = allowed_values(cls, key)
        if choices is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if item not in choices:
                guess = closest(str(item), choices)
                hint = f"; did you mean '{guess}'?" if guess else ""
                problems.append(f"`train.{key}: {value}`: '{item}' is not one of {', '.join(choices)}{hint}")
    return problems + precision_problems(train, hardware)


def precision_problems(train: dict[str, Any], hardware: dict[str, bool] | None = None) -> list[str]:
    """bf16 / fp16 asked of a machine that cannot train in them (every method: TRL's and PPO's `train:`)."""
    asked = [flag for flag in ("bf16", "fp16") if train.get(flag) is True]
    hardware = hardware or (hardware_precision() if asked else {})
    problems = []
    for flag in asked:
        if not hardware[flag]:
            gpu = "a CUDA GPU that supports bf16" if flag == "bf16" and hardware["cuda"] else "a CUDA GPU"
            problems.append(f"`train.{flag}: true` needs {gpu}, and this machine has none; remove it (fp32 is used)")
    return problems


def _library_message(exc: Exception) -> str:
    """The library's message as one line."""
    return " ".join(str(exc).split())


def _suggestion(exc: Exception, value: Any) -> str:
    listed = re.search(r"select one of \[([^\]]*)\]", str(exc))
    if not listed or not isinstance(value, str):
        return ""
    guess = closest(value, re.findall(r"'([^']+)'", listed.group(1)))
    return f"; did you mean '{guess}'?" if guess else ""


def build_train_args(method: str, train: dict[str, Any], output_dir: str) -> tuple[Any, list[str]]:
    """(the method's config object, problems naming recipe keys). The object is None when it cannot be built.

    `train` holds only the recipe's (already type-checked) keys. A failure of the whole is traced to
    the key that causes it by building with that key alone on top of the defaults.
    """
    cls = train_config_class(method)
    hardware = hardware_precision()
    problems = value_problems(cls, train, hardware)
    flagged = {key for key in train if any(p.startswith(f"`train.{key}:") for p in problems)}
    train = {k: v for k, v in train.items() if k not in flagged}  # the library checks the rest
    precision = {} if {"bf16", "fp16"} & set(train) else {"bf16": hardware["bf16"], "fp16": False}
    base = {**precision, **RUN_FIELDS, "output_dir": output_dir} if _is_training_arguments(cls) else {}
    if base and _launched_without_gpu(hardware):  # keep the gloo state the launch path built, as the run does
        base["accelerator_config"] = {**(train.get("accelerator_config") or {}), "use_configured_state": True}

    def attempt(fields: dict[str, Any]) -> Exception | None:
        try:
            cls(**current_names(cls, {**base, **fields}))
        except Exception as exc:  # the library's own checks raise ValueError, TypeError, ...
            return exc
        return None

    whole = attempt(train)
    if whole is None:
        return (None if problems else cls(**current_names(cls, {**base, **train}))), problems
    for key, value in train.items():
        exc = attempt({key: value})
        if exc is not None:
            problems.append(f"`train.{key}: {value}`: {_library_message(exc)}{_suggestion(exc, value)}")
    if not problems:  # only a combination fails
        keys = ", ".join(f"`train.{k}`" for k in train)
        problems.append(f"the `train:` values {keys} do not work together: {_library_message(whole)}")
    return None, problems


def _launched_without_gpu(hardware: dict[str, bool]) -> bool:
    import os

    return "LOCAL_RANK" in os.environ and not hardware["cuda"]


def _is_training_arguments(cls: type) -> bool:
    return any(c.__name__ == "TrainingArguments" for c in cls.__mro__)


# transformers' deprecated names -> current ones. A recipe may use either; the class is given the current one.
RENAMED = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def current_names(cls: type, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with deprecated aliases under their current names, and the class's own checkpointing default
    (TRL's configs turn it on) given under the current name: building the class then warns of nothing."""
    names = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    if not all(new in names for new in RENAMED.values()):
        return fields  # an older transformers: the old names are the current ones
    out = dict(fields)
    for old, new in RENAMED.items():
        if old in out:
            out.setdefault(new, out.pop(old))  # both given: the current name wins, as in TrainingArguments
    default = names["gradient_checkpointing"].default
    if "activation_checkpointing" not in out and isinstance(default, bool):
        out["activation_checkpointing"] = default
    return out
