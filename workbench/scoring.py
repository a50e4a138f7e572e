"""Batched reward-model scoring: token sequences in, one scalar per sequence out.

Used by reward-model evaluation and export statistics, rejection sampling, PPO and the shared
evaluation. Sequences are sorted by length into batches so that padding stays small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench.batching import length_sorted_batches


def score_sequences(model: Any, sequences: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 16) -> list[float]:
    """Reward of each token sequence under a one-label sequence-classification model (no grad)."""
    import torch

    device = next(model.parameters()).device
    scores: list[float] = [0.0] * len(sequences)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
            width = max(len(sequences[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
                mask[row, : len(sequences[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (batch, 1)
            for row, i in enumerate(batch):
                scores[i] = float(logits[row, 0])
    model.train(was_training)
    return scores


# ----------------------------------------------------------------------------------------------
# Reward sources: one callable interface, f(prompts, completions) -> list[float]


def import_function(spec: str) -> Any:
    """`package.module:function` or `path/to/file.py:function`."""
    import importlib
    import importlib.util
    from pathlib import Path

    from workbench.errors import WorkbenchError

    if ":" not in spec:
        raise WorkbenchError(f"reward function '{spec}' must be written module:function (e.g. my_rewards:length_penalty)")
    module_name, func_name = spec.rsplit(":", 1)
    try:
        if module_name.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, FileNotFoundError) as exc:
        raise WorkbenchError(f"reward function '{spec}': cannot import {module_name} ({exc})") from None
    if not callable(getattr(module, func_name, None)):
        raise WorkbenchError(f"reward function '{spec}': {module_name} has no function {func_name}")
    return getattr(module, func_name)


def checked_scores(name: str, scores: Any, expected: int) -> list[float]:
    """Rewards must be one finite number per completion: anything else is the user's bug, named in one sentence.

    The one check every online method (rejection sampling, PPO, GRPO, RLOO) applies to its reward source.
    """
    import math
    import numbers

    from workbench.errors import WorkbenchError

    if isinstance(scores, (str, bytes, dict)) or not hasattr(scores, "__len__"):
        raise WorkbenchError(
            f"reward source {name} returned {type(scores).__name__} {_short(scores)}, expected a list of {expected} numbers (one per completion)"
        )
    values = scores.tolist() if hasattr(scores, "tolist") else list(scores)
    if len(values) != expected:
        raise WorkbenchError(
            f"reward source {name} returned {len(values)} scores for {expected} completions, expected {expected} numbers (one per completion)"
        )
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise WorkbenchError(
                f"reward source {name} returned a non-number for completion {i} ({type(value).__name__} {_short(value)}); return floats"
            )
        if not math.isfinite(value):
            raise WorkbenchError(f"reward source {name} returned a non-finite score for completion {i} ({value})")
    return [float(v) for v in values]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def called_scores(name: str, scorer: Any, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Call a reward source and check what it returned; an exception inside it is reported naming it."""
    from workbench.errors import WorkbenchError

    try:
        scores = scorer(prompts, completions, **kwargs)
    except WorkbenchError:
        raise
    except Exception as exc:
        raise WorkbenchError(
            f"reward source {name} raised {type(exc).__name__} on a batch of {len(completions)} completions: {exc}"
        ) from exc
    return checked_scores(name, scores, len(completions))


def missing_reward_stats(key: str, name_or_path: str) -> str:
    """`normalize` asked of a reward model whose config stores no training-set mean/std (validate and the scorer)."""
    return f"`{key}.normalize`: {name_or_path} stores no reward_mean/reward_std (train it with method: reward)"


class RewardModelScorer:
    """A sequence-classification reward model with its own tokenizer and the data layer's formatting."""

    def __init__(self, name_or_path: str, dtype: str, normalize: bool, batch_size: int, max_length: int, device: Any = None):
        from workbench.config import ModelConfig
        from workbench.data.formatting import TokenizationSettings
        from workbench.models import load_reward_model, load_tokenizer

        cfg = ModelConfig(name_or_path=name_or_path, dtype=dtype)  # type: ignore[arg-type]
        self.tokenizer = load_tokenizer(cfg)
        self.model = load_reward_model(cfg, self.tokenizer, frozen=True).eval()  # whole, even under ZeRO-3
        if device is not None:
            self.model.to(device)
        self.settings = TokenizationSettings(max_length=max_length, max_prompt_length=max_length // 2)
        self.batch_size = batch_size
        config = self.model.config
        self.shift, self.scale = 0.0, 1.0
        if normalize:
            from workbench.errors import WorkbenchError

            if getattr(config, "reward_std", None) is None:
                raise WorkbenchError(missing_reward_stats("reward_model", name_or_path))
            self.shift, self.scale = config.reward_mean, config.reward_std or 1.0

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        from workbench.data.formatting import tokenize_sft

        seqs = []
        for prompt, completion in zip(prompts, completions):
            t = tokenize_sft(self.tokenizer, {"prompt": prompt, "completion": completion}, self.settings)
            seqs.append(t.prompt_ids + t.completion_ids)
        raw = score_sequences(self.model, seqs, self.tokenizer.pad_token_id, self.batch_size)
        return [(r - self.shift) / self.scale for r in raw]


def reward_source(cfg: Any, max_length: int, device: Any = None) -> Any:
    """The recipe's `reward_model:` as one callable f(prompts, completions, **kwargs) -> list[float] (a model on `device`)."""
    name = cfg.function or cfg.name_or_path
    scorer = (
        import_function(cfg.function)
        if cfg.function
        else RewardModelScorer(cfg.name_or_path, cfg.dtype, cfg.normalize, cfg.batch_size, max_length, device)
    )

    def call(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return called_scores(name, scorer, prompts, completions, **kwargs)

    call.scorer = scorer  # type: ignore[attr-defined]  # the loaded model, for callers that place it on a device
    return call
