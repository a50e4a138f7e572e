"""Recipe YAML -> typed dataclasses, with overrides and validation that names every bad key.

One job per module: `methods` (the method registry), `schema` (the sections and their defaults),
`load` (YAML, `--set` overrides, the resolved view), `checks` (typed conversion, unknown keys with the closest
valid key, the `train:` section against the method's real config class, cross-field checks).
Everything is re-exported here, so `from workbench.config import X` keeps working.
"""

from __future__ import annotations

from workbench.config.checks import (
    ALIASES,
    INVALID,
    build_dataclass,
    check_lora,
    check_train_section,
    closest,
    convert,
    cross_checks,
    plain_train_defaults,
    plain_value,
    train_config_class,
    train_field_defaults,
    type_hints,
    unknown_key_message,
)
from workbench.config.load import (
    apply_override,
    dump_yaml,
    load_recipe,
    parse_override,
    read_yaml,
    recipe_from_dict,
    resolved_dict,
)
from workbench.config.methods import METHOD_NAMES, METHODS, MethodSpec, ReferenceChoice, methods_where, reference_rule
from workbench.config.schema import (
    WORKBENCH_OWNED_TRAIN_KEYS,
    DataConfig,
    EvalConfig,
    GenerationConfig,
    LabelSpec,
    ModelConfig,
    Recipe,
    ReferenceConfig,
    RewardModelConfig,
    SourceConfig,
    SyntheticSpec,
    TrackingConfig,
    effective_max_prompt_length,
)

__all__ = [
    "ALIASES",
    "INVALID",
    "METHODS",
    "METHOD_NAMES",
    "WORKBENCH_OWNED_TRAIN_KEYS",
    "DataConfig",
    "EvalConfig",
    "GenerationConfig",
    "LabelSpec",
    "MethodSpec",
    "ModelConfig",
    "Recipe",
    "ReferenceChoice",
    "ReferenceConfig",
    "RewardModelConfig",
    "SourceConfig",
    "SyntheticSpec",
    "TrackingConfig",
    "apply_override",
    "build_dataclass",
    "check_lora",
    "check_train_section",
    "closest",
    "convert",
    "cross_checks",
    "dump_yaml",
    "effective_max_prompt_length",
    "load_recipe",
    "methods_where",
    "parse_override",
    "read_yaml",
    "recipe_from_dict",
    "reference_rule",
    "resolved_dict",
    "plain_train_defaults",
    "plain_value",
    "train_config_class",
    "train_field_defaults",
    "type_hints",
    "unknown_key_message",
]
