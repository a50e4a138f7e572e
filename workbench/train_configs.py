"""`train:` classes for the methods the workbench owns, extending TRL's so field names carry over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trl import RewardConfig, SFTConfig


@dataclass
class RejectionSamplingConfig(SFTConfig):
    """SFTConfig (for the fine-tuning stage) plus how completions are selected."""

    selection: Literal["best", "top_k", "threshold"] = field(
        default="best",
        metadata={"help": "best: best-of-n per prompt; top_k: the k best; threshold: every sample scoring >= score_threshold."},
    )
    top_k: int = field(default=1, metadata={"help": "Completions kept per prompt with selection: top_k."})
    score_threshold: float | None = field(default=None, metadata={"help": "Minimum score with selection: threshold."})
    write_pairs: bool = field(
        default=True, metadata={"help": "Also write best-vs-worst pairs (samples/pairs.jsonl) that a DPO recipe reads unchanged."}
    )
    min_pair_gap: float = field(default=0.0, metadata={"help": "A pair is written only when best - worst > this."})


@dataclass
class RewardTrainConfig(RewardConfig):
    """RewardConfig plus the pass that measures the reward mean/std stored in the export for normalizing."""

    reward_stats_pairs: int = field(
        default=1024,
        metadata={
            "help": "Training pairs scored after training for the stored reward_mean/reward_std "
            "(0: skip the pass; `reward_model.normalize` then refuses this model)."
        },
    )
    reward_stats_batch_size: int | None = field(
        default=None, metadata={"help": "Sequences per forward pass in that scoring pass (unset: per_device_eval_batch_size)."}
    )


def _h(text: str, default: object) -> object:
    return field(default=default, metadata={"help": text})


@dataclass
class PPOConfig:
    """PPO's `train:` section: TrainingArguments names where they mean the same thing, plus PPO's own."""

    learning_rate: float = _h("Learning rate of policy and value model.", 1e-6)  # type: ignore[assignment]
    max_steps: int = _h("Number of PPO updates (one rollout each).", 100)  # type: ignore[assignment]
    per_device_train_batch_size: int = _h("Prompts per rollout per process.", 8)  # type: ignore[assignment]
    gradient_accumulation_steps: int = _h("Micro-batches accumulated per optimizer step within a mini-batch.", 1)  # type: ignore[assignment]
    gradient_checkpointing: bool = _h("Recompute activations in the backward pass.", False)  # type: ignore[assignment]
    logging_steps: int = _h("Log every N updates.", 1)  # type: ignore[assignment]
    save_steps: int = _h("Checkpoint every N updates (0: never).", 50)  # type: ignore[assignment]
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = _h("Learning-rate schedule over max_steps.", "constant")  # type: ignore[assignment]
    warmup_steps: int = _h("Linear warmup updates.", 0)  # type: ignore[assignment]
    max_grad_norm: float = _h("Gradient clipping norm.", 1.0)  # type: ignore[assignment]
    ppo_epochs: int = _h("Passes over each rollout.", 4)  # type: ignore[assignment]
    num_mini_batches: int = _h("Mini-batches per pass (each one optimizer step).", 1)  # type: ignore[assignment]
    cliprange: float = _h("Policy ratio clip range.", 0.2)  # type: ignore[assignment]
    cliprange_value: float = _h("Value clip range around the rollout's values.", 0.2)  # type: ignore[assignment]
    vf_coef: float = _h("Weight of the value loss.", 0.1)  # type: ignore[assignment]
    gamma: float = _h("Discount.", 1.0)  # type: ignore[assignment]
    lam: float = _h("GAE lambda.", 0.95)  # type: ignore[assignment]
    kl_coef: float = _h("Per-token KL penalty beta (the initial value when target_kl is set).", 0.05)  # type: ignore[assignment]
    kl_estimator: Literal["k1", "k3"] = _h("KL estimator: k1 (log ratio) or k3 (non-negative, lower variance).", "k1")  # type: ignore[assignment]
    target_kl: float | None = _h("Adapt kl_coef toward this sequence KL (None: fixed kl_coef).", None)  # type: ignore[assignment]
    kl_horizon: int = _h("Samples over which the adaptive KL controller reacts.", 10000)  # type: ignore[assignment]
    whiten_rewards: bool = _h("Whiten the shaped rewards before GAE.", False)  # type: ignore[assignment]
    missing_eos_penalty: float | None = _h("Subtracted from the score of a response that never ended.", None)  # type: ignore[assignment]
    value_init: Literal["reward", "policy"] = _h(
        "Initialize the value model from the reward model (a model reward) or the policy.", "policy"
    )  # type: ignore[assignment]
    max_nonfinite_updates: int = _h("Stop after this many updates in a row with a non-finite loss or KL.", 3)  # type: ignore[assignment]
