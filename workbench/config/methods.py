"""THE method registry: one `MethodSpec` per method, and every list of methods derived from it.

Adding a method is its module (`run(ctx) -> RunResult`), one entry here, one recipe and its tests
(CONTRIBUTING.md). Pure declarations and pure rules: no TRL, torch or method module is imported, so
`validate`, `plan` and the comparison read a method's properties without loading it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

DataKind = Literal["preference", "sft", "prompt", "unpaired"]
# Which frozen reference a method measures its policy against (the rule: `reference_rule`).
ReferenceStyle = Literal["none", "offline", "rollout", "online"]
# How a method samples: not at all; n per prompt with a plain copy of the policy, scored on the main process (then
# fine-tuning, or pairs); its own rollouts; TRL's online trainer.
SamplingStyle = Literal["none", "best_of_n", "rollout", "trl"]


@dataclass(frozen=True)
class MethodSpec:
    """What the rest of the workbench needs to know about one method, without importing it."""

    name: str
    module: str  # imported by name (runner, stage processes) only when the method runs
    train_config: tuple[str, str]  # (module, class) of its `train:` section
    data_kind: DataKind  # the records the data layer gives it
    summary: str  # one line for help texts and docs
    produces_policy: bool = True  # a causal LM the shared evaluation judges (False: a reward model, or data)
    needs_reward: bool = False  # trains against `reward_model` (a comparison wires its reward stage in)
    reference: ReferenceStyle = "none"
    value_model: bool = False  # a value model (a head on the policy, or a separate critic) trains beside the policy
    sampling: SamplingStyle = "none"
    hf_trainer: bool = True  # a transformers Trainer trains it (its precision defaults, eval-set checks)
    reads_lm_head: bool = False  # TRL computes its log-probs from lm_head.weight itself (LoRA there never trains)
    checks_declared_choices: bool = False  # validate checks `train:` strings against the choices TRL's class declares
    writes_data: str | None = None  # the preference-data file it writes in its run directory instead of a model (`data_from`)

    @property
    def produces_model(self) -> bool:
        """It exports a model to OUTPUT_DIR/model (False: it writes `writes_data` and trains nothing)."""
        return self.writes_data is None

    @property
    def model_role(self) -> str:
        """The role of the model it loads in the memory plan and reports: the policy it trains or samples from, or
        the reward model it trains."""
        return "reward" if self.produces_model and not self.produces_policy else "policy"


WORKBENCH_CONFIGS = "workbench.train_configs"

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "sft",
            "workbench.methods.sft",
            ("trl", "SFTConfig"),
            "sft",
            "supervised fine-tuning on (prompt, completion) examples, or on the chosen responses of pairs",
        ),
        MethodSpec(
            "reward",
            "workbench.methods.reward",
            (WORKBENCH_CONFIGS, "RewardTrainConfig"),
            "preference",
            "a sequence-classification reward model trained on preference pairs",
            produces_policy=False,
        ),
        MethodSpec(
            "dpo",
            "workbench.methods.dpo",
            (WORKBENCH_CONFIGS, "DPOTrainConfig"),
            "preference",
            "DPO and its loss family (IPO, robust, hinge, ...) on TRL's DPOTrainer",
            reference="offline",
            reads_lm_head=True,
        ),
        MethodSpec(
            "rejection_sampling",
            "workbench.methods.rejection_sampling",
            (WORKBENCH_CONFIGS, "RejectionSamplingConfig"),
            "prompt",
            "best-of-n sampling scored by the reward source, then fine-tuning on the kept responses",
            needs_reward=True,
            sampling="best_of_n",
        ),
        MethodSpec(
            "pairs",
            "workbench.methods.pairs",
            (WORKBENCH_CONFIGS, "PairsConfig"),
            "prompt",
            "on-policy preference pairs: n responses per prompt from the model, best vs worst by the reward source",
            produces_policy=False,
            needs_reward=True,
            sampling="best_of_n",
            hf_trainer=False,
            writes_data="pairs.jsonl",
        ),
        MethodSpec(
            "ppo",
            "workbench.methods.ppo",
            (WORKBENCH_CONFIGS, "PPOConfig"),
            "prompt",
            "PPO with a value model, on accelerate + DeepSpeed",
            needs_reward=True,
            reference="rollout",
            value_model=True,
            sampling="rollout",
            hf_trainer=False,
        ),
        MethodSpec(
            "kto",
            "workbench.methods.kto",
            ("trl", "KTOConfig"),
            "unpaired",
            "KTO on TRL's KTOTrainer, from pairs or (prompt, completion, label) rows",
            reference="offline",
            reads_lm_head=True,
            checks_declared_choices=True,
        ),
        MethodSpec(
            "grpo",
            "workbench.methods.grpo",
            ("trl", "GRPOConfig"),
            "prompt",
            "GRPO on TRL's GRPOTrainer (group-relative advantages)",
            needs_reward=True,
            reference="online",
            sampling="trl",
            reads_lm_head=True,
            checks_declared_choices=True,
        ),
        MethodSpec(
            "rloo",
            "workbench.methods.rloo",
            ("trl", "RLOOConfig"),
            "prompt",
            "RLOO on TRL's RLOOTrainer (leave-one-out baselines)",
            needs_reward=True,
            reference="online",
            sampling="trl",
            reads_lm_head=True,
            checks_declared_choices=True,
        ),
    )
}

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def method_spec(name: str) -> MethodSpec | None:
    return METHODS.get(name)


def methods_where(**properties: Any) -> tuple[str, ...]:
    """The names of the methods whose spec has every given property value, in registry order."""
    return tuple(n for n, s in METHODS.items() if all(getattr(s, k) == v for k, v in properties.items()))


# ----------------------------------------------------------------------------------------------
# Which reference a run uses: one rule for the methods, the memory plan and the manifest


ReferenceKind = Literal["none", "model", "adapters_disabled", "precomputed"]


@dataclass(frozen=True)
class ReferenceChoice:
    """The frozen reference of a run: no reference, a model to load, the policy with its LoRA adapters
    disabled, or log-probs precomputed with the initial policy."""

    kind: ReferenceKind
    name_or_path: str | None = None  # the model loaded as the reference (kind "model")
    separate: bool = False  # named by `reference.name_or_path` rather than a copy of the policy's start
    why_none: str = ""

    def describe(self) -> str:
        """The manifest's `reference` entry."""
        if self.kind == "none":
            return f"none ({self.why_none})"
        if self.kind == "adapters_disabled":
            return "policy base with adapters disabled"
        if self.kind == "precomputed":
            return "precomputed log-probs of the initial policy"
        return f"separate model {self.name_or_path}" if self.separate else f"frozen copy of {self.name_or_path}"


def reference_rule(recipe: Any, train: Mapping[str, Any]) -> ReferenceChoice:
    """The reference `recipe` trains against. `train`: the `train:` values over the method's defaults (TRL's
    online trainers keep no reference at `beta` 0).

    offline (DPO, KTO): `reference.name_or_path`, else the adapters disabled under LoRA, else precomputed
    log-probs when asked, else a frozen copy of the policy. rollout (PPO): the adapters disabled under LoRA,
    else a frozen copy of `reference.name_or_path` or the policy. online (GRPO, RLOO): none at beta 0, else
    the adapters disabled under LoRA, else a frozen copy of the policy (TRL's trainer takes no other model).
    """
    spec = METHODS[recipe.method]
    model, ref = recipe.model, recipe.reference
    lora = model.lora is not None
    if spec.reference == "none":
        return ReferenceChoice("none", why_none=f"{recipe.method} trains against no reference")
    if spec.reference == "online" and float(train.get("beta", 0.0)) == 0.0:
        return ReferenceChoice("none", why_none="beta 0: no KL term")
    if spec.reference == "offline" and ref.name_or_path:
        return ReferenceChoice("model", ref.name_or_path, separate=True)
    if lora:
        return ReferenceChoice("adapters_disabled")
    if spec.reference == "offline" and ref.precompute_log_probs:
        return ReferenceChoice("precomputed")
    if spec.reference == "rollout":
        return ReferenceChoice("model", ref.name_or_path or model.name_or_path)
    return ReferenceChoice("model", model.name_or_path)
