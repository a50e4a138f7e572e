"""`train:` classes for the methods the workbench owns, extending TRL's so field names carry over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trl import DPOConfig, RewardConfig, SFTConfig

GROUP_BY_LENGTH_HELP = (
    "Sampler for training: 'group_by_length' (the default here: batches of pairs of similar length, from "
    "shuffled mega-batches so training stays stochastic; a pair's chosen and rejected stay together; seeded), "
    "'random' (TRL's default, the plain-TRL loss curve), 'sequential' or 'batch_rebalance'."
)


@dataclass
class RejectionSamplingConfig(SFTConfig):
    """SFTConfig (for the fine-tuning stage) plus how completions are selected."""

    selection: Literal["best", "top_k", "threshold"] = field(
        default="best",
        metadata={
            "help": "Among each prompt's finished completions (those cut at max_new_tokens are never kept; a prompt with "
            "none is skipped and counted): best: the best; top_k: the k best; threshold: every one scoring >= score_threshold."
        },
    )
    top_k: int = field(default=1, metadata={"help": "Completions kept per prompt with selection: top_k."})
    score_threshold: float | None = field(default=None, metadata={"help": "Minimum score with selection: threshold."})
    write_pairs: bool = field(
        default=True, metadata={"help": "Also write best-vs-worst pairs (samples/pairs.jsonl) that a DPO recipe reads unchanged."}
    )
    min_pair_gap: float = field(
        default=0.0, metadata={"help": "A pair (best vs worst finished completion) is written only when best - worst > this."}
    )


@dataclass
class PairsConfig:
    """The pairs step's `train:` section: it trains nothing, so it holds only how pairs are chosen."""

    min_margin: float = field(
        default=0.0,
        metadata={
            "help": "A prompt gives a pair (its best vs its worst finished response) only when best - worst > this; "
            "prompts at or below it are skipped and counted (a tie is never a preference)."
        },
    )
    rejected: Literal["finished", "any"] = field(
        default="finished",
        metadata={
            "help": "The rejected side: the worst finished response (`finished`), or the worst of all, a response cut "
            "at max_new_tokens included (`any`: prompts with one finished response give pairs too, and training on "
            "them favours answers that end; the chosen side is always finished)."
        },
    )


SAMPLERS = ["random", "sequential", "group_by_length", "batch_rebalance"]  # TrainingArguments' choices
PACKING_HELP = (
    "Padding-free forward passes: each batch's chosen and rejected sequences are packed into rows with position "
    "ids restarting per sequence (flash attention: one varlen row; sdpa/eager: rows as wide as the batch's longest "
    "sequence, an exact block-diagonal mask). Same log-probs, rewards and loss as padding. (TRL's own `padding_free` "
    "is disabled in TRL 1.16.)"
)


@dataclass
class DPOTrainConfig(DPOConfig):
    """DPOConfig plus padding-aware batching: length-grouped sampling by default and packed forward passes."""

    train_sampling_strategy: str = field(default="group_by_length", metadata={"help": GROUP_BY_LENGTH_HELP, "choices": SAMPLERS})
    packing: bool = field(default=False, metadata={"help": PACKING_HELP})


@dataclass
class RewardTrainConfig(RewardConfig):
    """RewardConfig plus padding-aware batching and the pass that measures the reward mean/std stored in the
    export for normalizing."""

    train_sampling_strategy: str = field(default="group_by_length", metadata={"help": GROUP_BY_LENGTH_HELP, "choices": SAMPLERS})
    packing: bool = field(default=False, metadata={"help": PACKING_HELP})
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

    learning_rate: float = _h("Learning rate of the policy (the actor).", 1e-6)  # type: ignore[assignment]
    critic_learning_rate: float | None = _h("Learning rate of the value model (None: learning_rate).", None)  # type: ignore[assignment]
    max_steps: int = _h("Number of PPO updates (one rollout each).", 100)  # type: ignore[assignment]
    per_device_train_batch_size: int = _h("Completions per rollout per process (prompts x num_generations).", 8)  # type: ignore[assignment]
    num_generations: int = _h(
        "Completions sampled per prompt (must divide per_device_train_batch_size); > 1 enables score_baseline: prompt.", 1
    )  # type: ignore[assignment]
    gradient_accumulation_steps: int = _h(
        "Equal micro-batches accumulated per optimizer step within a mini-batch (per_device_train_batch_size must be a "
        "multiple of num_mini_batches x this).",
        1,
    )  # type: ignore[assignment]
    bf16: bool | None = _h(
        "bf16 mixed precision (accelerate's mixed_precision: autocast, fp32 weights and optimizer); unset or false: the "
        "accelerate config's setting (fp32 without one), as for TrainingArguments; needs a CUDA GPU that supports bf16.",
        None,
    )  # type: ignore[assignment]
    fp16: bool = _h("fp16 mixed precision (accelerate's, with loss scaling); needs a CUDA GPU.", False)  # type: ignore[assignment]
    gradient_checkpointing: bool = _h("Recompute activations in the backward pass (policy and value model).", False)  # type: ignore[assignment]
    logging_steps: int = _h("Log every N updates.", 1)  # type: ignore[assignment]
    save_steps: int = _h("Checkpoint every N updates (0: never).", 50)  # type: ignore[assignment]
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = _h(
        "Learning-rate schedule over all optimizer steps (max_steps x ppo_epochs x num_mini_batches).", "constant"
    )  # type: ignore[assignment]
    warmup_steps: int = _h("Linear warmup, in updates (overrides warmup_ratio when > 0).", 0)  # type: ignore[assignment]
    warmup_ratio: float = _h("Linear warmup as a share of max_steps.", 0.0)  # type: ignore[assignment]
    max_grad_norm: float = _h(
        "Gradient clipping norm, applied to actor and critic gradients separately (with the value head, the policy's "
        "weights carry only the policy's gradient unless value_head_trains_backbone); under DeepSpeed the engine clips "
        "all gradients together to this one norm.",
        1.0,
    )  # type: ignore[assignment]
    ppo_epochs: int = _h("Passes over each rollout.", 2)  # type: ignore[assignment]
    num_mini_batches: int = _h(
        "Equal mini-batches per pass over a rollout, each one optimizer step (must divide per_device_train_batch_size).", 1
    )  # type: ignore[assignment]
    cliprange: float = _h("Policy ratio clip range.", 0.2)  # type: ignore[assignment]
    cliprange_value: float = _h("Value clip range around the rollout's values.", 0.2)  # type: ignore[assignment]
    vf_coef: float = _h("Weight of the value loss.", 0.1)  # type: ignore[assignment]
    gamma: float = _h("Discount.", 1.0)  # type: ignore[assignment]
    lam: float = _h("GAE lambda.", 0.95)  # type: ignore[assignment]
    kl_coef: float = _h(
        "KL penalty beta (the initial value when target_kl is set), between OpenRLHF's 0.01 and TRL PPOv2's 0.05; larger "
        "values hold the reward gain back, smaller ones let the policy end its responses early to dodge the summed KL "
        "(docs/ppo.md).",
        0.03,
    )  # type: ignore[assignment]
    kl_estimator: Literal["auto", "k1", "k2", "k3"] = _h(
        "KL estimator: auto (k1 with kl_in: reward, k2 with kl_in: loss); k1 (log ratio: in the reward its policy gradient "
        "is exactly the KL's; refused in the loss, where its expected gradient is 0); k2 (0.5 x log ratio squared: in the "
        "loss its gradient is exactly the KL's); k3 (non-negative, lower variance; in the loss its gradient is the reverse "
        "KL(ref || policy)'s, in the reward it under-penalizes tokens the policy made likelier). With kl_in: loss the KL "
        "logged (and steered by target_kl) is k3 whatever this says.",
        "auto",
    )  # type: ignore[assignment]
    kl_in: Literal["reward", "loss"] = _h(
        "Where the KL penalty goes: reward (per-token, shaped into the returns) or loss (a per-token mean added to the "
        "policy loss, as GRPO).",
        "reward",
    )  # type: ignore[assignment]
    target_kl: float | None = _h("Adapt kl_coef toward this sequence KL (None: fixed kl_coef).", None)  # type: ignore[assignment]
    kl_horizon: int = _h("Samples over which the adaptive KL controller reacts.", 10000)  # type: ignore[assignment]
    reward_normalization: Literal["running", "none"] = _h(
        "running: scale scores by the running mean/std of every score seen (OpenRLHF's normalize_reward); none: raw.", "running"
    )  # type: ignore[assignment]
    score_baseline: Literal["none", "prompt"] = _h(
        "prompt: subtract from each score the mean score of the other completions of its prompt (needs num_generations > 1).",
        "none",
    )  # type: ignore[assignment]
    whiten_rewards: bool = _h("Whiten the shaped rewards before GAE (global batch statistics).", False)  # type: ignore[assignment]
    missing_eos_penalty: float | None = _h("Subtracted from the score of a response that never ended.", None)  # type: ignore[assignment]
    value_init: Literal["reward", "policy"] = _h(
        "Initialize the value model from the reward model (a model reward) or the policy.", "policy"
    )  # type: ignore[assignment]
    value_model: Literal["auto", "separate", "shared"] = _h(
        "auto: a value head on the policy's backbone (one forward for both, no second backbone to run and train; "
        "docs/ppo.md), except a separate critic from the reward model when value_init: reward names a reward model dir "
        "(full fine-tuning only); separate / shared force one.",
        "auto",
    )  # type: ignore[assignment]
    value_head_trains_backbone: bool = _h(
        "With the value head: let the value loss train the shared backbone too (as TRL's classic PPO). Off: the head "
        "learns on the backbone's last hidden state detached, so the policy's weights get only the policy's gradient, "
        "clipped on its own; on, the backbone's gradient holds both and is clipped as one.",
        False,
    )  # type: ignore[assignment]
    critic_warmup_steps: int = _h(
        "First updates that train only the value model: the policy's weights and its optimizer state are left unchanged "
        "(its first update after them is a fresh Adam's); with the value head, the backbone is detached from the value "
        "loss during them whatever value_head_trains_backbone says.",
        0,
    )  # type: ignore[assignment]
    max_nonfinite_updates: int = _h(
        "Stop after this many updates in a row with a non-finite loss or KL (each such update is undone).", 3
    )  # type: ignore[assignment]
    diagnose_kl: float = _h(
        "End-of-run diagnosis: a final sequence KL above this is flagged when the reward did not rise beyond noise or "
        "the policy degenerated (entropy, length or finished share collapsing); a high KL that bought a clear gain is not.",
        10.0,
    )  # type: ignore[assignment]


def ppo_value_head(value_model: str, value_init: str, lora: bool, reward_model_dir: str | None) -> bool:
    """True: PPO's value function is a head on the policy's backbone; False: a separate critic model.

    The one rule for `train.value_model`, read by methods/ppo_learner.py and plan.py alike.
    """
    if value_model != "auto":
        return value_model == "shared"
    return lora or not (value_init == "reward" and reward_model_dir)
