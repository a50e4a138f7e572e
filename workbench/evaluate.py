"""The shared evaluation: the same prompts, sampling, scorers and metric names for every trained policy.

For a policy (a run's `model/`): sample responses to held-out prompts of the shared data's eval
split with the shared generation module and a fixed seed, then measure

- `reward_mean`: the pipeline's reward model on those responses;
- `gold_reward_mean`: an independent scorer (another reward model or a function), when configured;
- `win_rate_vs_baseline`: share of samples where the policy's response outscores the baseline policy's
  response to the same prompt (same seed), ties half, judged by the gold scorer when there is one;
- `kl_to_reference`: sequence-level KL(policy || reference) estimated on the policy's own samples
  (k3 per token, summed; `kl_to_reference_k1` is the plain log-ratio estimate);
- `preference_accuracy`: on held-out pairs, share where log pi/pi_ref ranks chosen above rejected (ties half);
- `response_length_mean` (tokens), `distinct_2` (diversity);
- the cost of its training run from the run's manifest: `wall_seconds`, `train_tokens`, `peak_memory_mb`.

Models are loaded one at a time (policy, reference, baseline, scorers), so evaluation needs the
memory of one model. It runs in one process.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench import metrics as M
from workbench import stats as S
from workbench.config import EvalConfig, Recipe, dump_yaml, methods_where, recipe_from_dict
from workbench.data.pipeline import prepare, read_json, write_json, write_jsonl
from workbench.data.schema import stable_hash
from workbench.errors import DataError, WorkbenchError
from workbench.health import eval_shortfalls
from workbench.models import load_policy, load_tokenizer
from workbench.sampling.generation import sample_and_score
from workbench.sampling.logprobs import token_logprobs
from workbench.sampling.settings import EVAL_SAMPLING, refuse_sampling
from workbench.scoring import reward_source

log = logging.getLogger("workbench")

# The metric names, identical for every method (compare's tables and plots read these).
QUALITY_METRICS = (
    "reward_mean",
    "gold_reward_mean",
    "win_rate_vs_baseline",
    "kl_to_reference",
    "preference_accuracy",
    "response_length_mean",
    "distinct_2",
)
COST_METRICS = ("wall_seconds", "train_tokens", "generated_tokens", "peak_memory_mb")
POLICY_METHODS = methods_where(produces_policy=True)


@dataclass
class EvalInputs:
    """What every policy is evaluated on: distinct held-out prompts and held-out pairs, tokenized once."""

    prompts: list[Any]  # prompt contents (text or messages), for the scorers
    prompt_ids: list[list[int]]
    pairs: list[Any]  # TokenizedPair; empty when the data has no pairs
    fingerprint: str
    max_length: int
    pair_texts: list[tuple[Any, Any, Any]] = field(default_factory=list)  # (prompt, chosen, rejected) of `pairs`
    requested: dict[str, int] = field(default_factory=dict)  # eval.num_prompts / num_pairs asked for (the split may hold fewer)

    @property
    def shortfalls(self) -> list[dict[str, str]]:
        """An `eval_shortfall` flag for each of eval.num_prompts / num_pairs the eval split could not fill."""
        return eval_shortfalls(self.requested, {"num_prompts": len(self.prompts), "num_pairs": len(self.pairs)})


@dataclass
class Samples:
    """One policy's responses to the evaluation prompts, in (prompt, sample) order."""

    prompt_index: list[int]
    token_ids: list[list[int]]  # without the EOS
    finished: list[bool]
    texts: list[str]
    scores: dict[str, list[float]] = field(default_factory=dict)  # scorer name -> one score per response
    eos_ids: list[int | None] = field(default_factory=list)  # the EOS id that ended each response (None: cut)
    per_sample: dict[str, list[float]] = field(default_factory=dict)  # measured per response: KL, win vs baseline

    @property
    def sample_index(self) -> list[int]:
        """Each response's index among its prompt's samples (pairs a policy's sample with the baseline's)."""
        seen: dict[int, int] = {}
        out = []
        for p in self.prompt_index:
            out.append(seen.get(p, 0))
            seen[p] = out[-1] + 1
        return out

    def sampled_ids(self, eos_id: int) -> list[list[int]]:
        """The tokens the policy actually sampled: a finished response also sampled the EOS that ended it."""
        ends = self.eos_ids or [eos_id if done else None for done in self.finished]
        return [ids + ([end] if end is not None else []) for ids, end in zip(self.token_ids, ends)]

    def to_rows(self, prompts: Sequence[Any]) -> list[dict[str, Any]]:
        return [
            {
                "prompt_index": p,
                "sample_index": s,
                "prompt": prompts[p],
                "response": text,
                "num_tokens": len(ids),
                "finished": done,
                **{name: values[i] for name, values in self.scores.items()},
                **{name: values[i] for name, values in self.per_sample.items()},
            }
            for i, (p, s, ids, done, text) in enumerate(
                zip(self.prompt_index, self.sample_index, self.token_ids, self.finished, self.texts)
            )
        ]


# ----------------------------------------------------------------------------------------------
# Inputs


def eval_inputs(recipe: Recipe, tokenizer: Any) -> EvalInputs:
    """Held-out prompts and pairs from the recipe's data (its eval split), deterministic for the recipe."""
    data, cfg = recipe.data, recipe.eval
    if data.eval_split <= 0:
        raise WorkbenchError(
            "evaluation needs held-out prompts but `data.eval_split` is 0; set it (e.g. --set data.eval_split=0.1); "
            "`data.split_by: prompt` keeps every evaluation prompt unseen in training"
        )
    try:
        prepared = prepare(data, recipe.data_seed, tokenizer, kind="preference")
    except DataError:  # prompt-only or SFT data: prompts, but no pairs
        prepared = prepare(data, recipe.data_seed, tokenizer, kind="prompt")
    records = prepared.tokenized["eval"]
    prompts, prompt_ids, seen = [], [], set()
    for row, tok in zip(prepared.eval, records):
        key = tuple(tok.prompt_ids)
        if key not in seen and len(prompts) < cfg.num_prompts:
            seen.add(key)
            prompts.append(row["prompt"])
            prompt_ids.append(list(tok.prompt_ids))
    if not prompts:
        raise WorkbenchError(f"the eval split of `data` is empty (eval_split {data.eval_split}); raise `data.eval_split`")
    pairs = list(records[: cfg.num_pairs]) if prepared.kind == "preference" else []
    pair_texts = [(r["prompt"], r["chosen"], r["rejected"]) for r in prepared.eval[: len(pairs)]]
    fingerprint = stable_hash([prompt_ids, [[p.prompt_ids, p.chosen_ids, p.rejected_ids] for p in pairs]])[:16]
    requested = {"num_prompts": cfg.num_prompts, "num_pairs": cfg.num_pairs}
    return EvalInputs(prompts, prompt_ids, pairs, fingerprint, data.max_length, pair_texts, requested)


# ----------------------------------------------------------------------------------------------
# Steps, each loading what it needs


def sample_responses(model: Any, tokenizer: Any, inputs: EvalInputs, cfg: EvalConfig) -> Samples:
    """`samples_per_prompt` responses per prompt with the evaluation's fixed sampling and seed (PPO's sampling path)."""
    gen = dataclasses.replace(cfg.generation, num_samples=cfg.samples_per_prompt, backend="transformers")
    made = sample_and_score(model, tokenizer, inputs.prompt_ids, inputs.prompts, gen, cfg.seed)
    done = made.completions
    return Samples(
        [c.prompt_index for c in done],
        [c.token_ids for c in done],
        [c.finished for c in done],
        made.texts,
        eos_ids=[c.eos_id for c in done],
    )


@dataclass
class LogProbs:
    """Per-token log-probabilities of the policy's samples and of the held-out pairs under one model."""

    samples: list[list[float]]
    chosen: list[list[float]]
    rejected: list[list[float]]


def log_probs(
    model: Any, tokenizer: Any, inputs: EvalInputs, samples: Samples, cfg: EvalConfig, pairs: LogProbs | None = None
) -> LogProbs:
    """The samples' log-probs, and the held-out pairs' (taken from `pairs` when this model's were computed before)."""
    pad, bs = tokenizer.pad_token_id, cfg.batch_size
    sample_prompts = [inputs.prompt_ids[p] for p in samples.prompt_index]
    if pairs is None and inputs.pairs:
        pairs = pair_log_probs(model, tokenizer, inputs, cfg)
    return LogProbs(
        token_logprobs(model, sample_prompts, samples.sampled_ids(tokenizer.eos_token_id), pad, bs, cfg.generation.temperature),
        pairs.chosen if pairs else [],
        pairs.rejected if pairs else [],
    )


def pair_log_probs(model: Any, tokenizer: Any, inputs: EvalInputs, cfg: EvalConfig) -> LogProbs:
    """The held-out pairs' log-probs under one model (`model`, or a path to load): the same for every policy judged
    against it as reference, so a comparison computes them once."""
    if isinstance(model, (str, Path)):
        loaded = load_policy(str(model), tokenizer).to(device())
        try:
            return pair_log_probs(loaded, tokenizer, inputs, cfg)
        finally:
            del loaded
    pad, bs = tokenizer.pad_token_id, cfg.batch_size
    prompts = [p.prompt_ids for p in inputs.pairs]
    return LogProbs(
        [],
        token_logprobs(model, prompts, [p.chosen_ids for p in inputs.pairs], pad, bs),
        token_logprobs(model, prompts, [p.rejected_ids for p in inputs.pairs], pad, bs),
    )


def score(samples: Samples, inputs: EvalInputs, scorers: dict[str, Callable[..., list[float]]]) -> None:
    """Adds each scorer's score of every response to `samples.scores`."""
    prompts = [inputs.prompts[p] for p in samples.prompt_index]
    for name, scorer in scorers.items():
        samples.scores[name] = scorer(prompts, samples.texts)


def scorers_for(cfg: EvalConfig, recipe: Recipe | None, max_length: int) -> dict[str, Callable[..., list[float]]]:
    """`reward` (the pipeline's reward model, else the recipe's) and `gold` (the independent scorer), where configured."""
    out = {}
    rm = cfg.reward_model or (recipe.reward_model if recipe is not None else None)
    if rm is not None and (rm.name_or_path or rm.function):
        out["reward"] = reward_source(rm, max_length)
    if cfg.gold_reward is not None:
        out["gold"] = reward_source(cfg.gold_reward, max_length)
    return out


def judge_of(cfg: EvalConfig, scorers: dict[str, Any]) -> str | None:
    if cfg.judge == "gold" and "gold" in scorers:
        return "gold"
    return "reward" if "reward" in scorers else ("gold" if "gold" in scorers else None)


# ----------------------------------------------------------------------------------------------
# Metrics from the pieces (pure)


def quality_metrics(
    samples: Samples, policy: LogProbs, reference: LogProbs, baseline: Samples | None, judge: str | None
) -> dict[str, Any]:
    """Every quality metric from the samples, their log-probs under policy and reference, and the baseline's samples.

    Each mean gets `<metric>_stderr`, clustered by prompt (stats.clustered_mean); the per-response values
    behind KL and win rate are kept in `samples.per_sample` for eval_samples.jsonl.
    """
    kls = [M.sequence_kl(a, b) for a, b in zip(policy.samples, reference.samples)]
    lengths = [float(len(t)) for t in samples.token_ids]
    finished = [float(f) for f in samples.finished]
    samples.per_sample["kl_to_reference"] = [k3 for _, k3 in kls]
    out: dict[str, Any] = {
        "reward_mean": _mean(samples.scores.get("reward")),
        "gold_reward_mean": _mean(samples.scores.get("gold")),
        "win_rate_vs_baseline": None,
        "kl_to_reference": _mean([k3 for _, k3 in kls]),
        "kl_to_reference_k1": _mean([k1 for k1, _ in kls]),
        "preference_accuracy": None,
        "response_length_mean": _mean(lengths),
        "distinct_2": finite_or_none(M.distinct_n(samples.token_ids, 2)),  # NaN: no response has two tokens
        "finished_share": _mean(finished),
    }
    if policy.chosen:
        chosen = M.implicit_rewards(policy.chosen, reference.chosen)
        rejected = M.implicit_rewards(policy.rejected, reference.rejected)
        out["preference_accuracy"] = M.pairwise_accuracy(chosen, rejected)
    if baseline is not None and judge is not None:
        samples.per_sample["win"] = S.win_indicators(samples.scores[judge], baseline.scores[judge])
        out["win_rate_vs_baseline"] = M.win_rate(samples.scores[judge], baseline.scores[judge])
    per_response = {
        "reward_mean": samples.scores.get("reward"),
        "gold_reward_mean": samples.scores.get("gold"),
        "win_rate_vs_baseline": samples.per_sample.get("win"),
        "kl_to_reference": samples.per_sample["kl_to_reference"],
        "response_length_mean": lengths,
        "finished_share": finished,
    }
    for key, values in per_response.items():  # None, not NaN, where undefined (a single prompt)
        out[f"{key}_stderr"] = finite_or_none(S.clustered_mean(values, samples.prompt_index).stderr) if values else None
    return out


def reward_model_metrics(scorer: Callable[..., list[float]], inputs: EvalInputs) -> dict[str, Any]:
    """The pipeline's reward model on the held-out pairs the policies are judged with: accuracy, the length-only
    rule's accuracy on the same pairs (response tokens), and every margin (chosen - rejected score)."""
    if not inputs.pair_texts:
        return {}
    prompts = [p for p, _, _ in inputs.pair_texts]
    chosen = scorer(prompts, [c for _, c, _ in inputs.pair_texts])
    rejected = scorer(prompts, [r for _, _, r in inputs.pair_texts])
    return {
        "accuracy": M.pairwise_accuracy(chosen, rejected),
        "length_baseline_accuracy": M.length_baseline_accuracy(
            [len(p.chosen_ids) for p in inputs.pairs], [len(p.rejected_ids) for p in inputs.pairs]
        ),
        "num_pairs": len(chosen),
        "margins": [c - r for c, r in zip(chosen, rejected)],
    }


def _mean(values: Sequence[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def refuse_non_finite(results: dict[str, Any], policy: str) -> None:
    """No NaN or infinity reaches eval.json or a report: a measurement that gives one is an error, named."""
    bad = [k for k, v in results.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise WorkbenchError(
            f"evaluating {policy} gave non-finite {', '.join(bad)}: a sampled token has probability 0 under the policy or "
            "the reference (a different tokenizer or vocabulary?); eval.json was not written"
        )


def cost_metrics(run_dir: Path) -> dict[str, Any]:
    """The training run's cost from its manifest (None for what it did not record)."""
    manifest = read_json(run_dir / "manifest.json")
    cost = manifest.get("cost") or {}
    return {
        "wall_seconds": manifest.get("wall_seconds"),
        "train_tokens": cost.get("train_tokens"),
        "generated_tokens": cost.get("generated_tokens"),
        "peak_memory_mb": cost.get("peak_memory_mb"),
    }


# ----------------------------------------------------------------------------------------------
# One policy


def device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_policy(path: str, tokenizer: Any, inputs: EvalInputs, cfg: EvalConfig) -> tuple[Samples, LogProbs]:
    """Load a policy, sample its responses and their log-probs (and the pairs'), free it."""
    model = load_policy(path, tokenizer).to(device())
    samples = sample_responses(model, tokenizer, inputs, cfg)
    lp = log_probs(model, tokenizer, inputs, samples, cfg)
    del model
    return samples, lp


def reference_log_probs(
    path: str, tokenizer: Any, inputs: EvalInputs, samples: Samples, cfg: EvalConfig, pairs: LogProbs | None = None
) -> LogProbs:
    model = load_policy(path, tokenizer).to(device())
    lp = log_probs(model, tokenizer, inputs, samples, cfg, pairs)
    del model
    return lp


@dataclass
class Shared:
    """What a comparison's evaluations of one seed share: the baseline's scored samples and the reference's
    log-probs of the held-out pairs (the same for every policy), computed once instead of once per policy."""

    baselines: dict[tuple[str, int], Samples] = field(default_factory=dict)  # (baseline path, id of scorers) -> samples
    reference_pairs: dict[str, LogProbs] = field(default_factory=dict)  # reference path -> its pairs' log-probs


def same_model(a: str | Path | None, b: str | Path | None) -> bool:
    """Two model paths naming the same local directory (hub ids compare as text)."""
    if a is None or b is None:
        return False
    pa, pb = Path(a), Path(b)
    return pa.resolve() == pb.resolve() if pa.exists() and pb.exists() else str(a) == str(b)


def baseline_samples(path: str, tokenizer: Any, inputs: EvalInputs, cfg: EvalConfig, scorers: dict[str, Any]) -> Samples:
    """The baseline policy's scored responses (same prompts, sampling and seed as every policy)."""
    model = load_policy(path, tokenizer).to(device())
    samples = sample_responses(model, tokenizer, inputs, cfg)
    del model
    score(samples, inputs, scorers)
    return samples


def run_recipe(run_dir: Path, overrides: Sequence[str] = ()) -> Recipe:
    """The recipe a run trained with (its resolved recipe.yaml), with `--set` overrides applied."""
    from workbench.config import apply_override, parse_override

    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise WorkbenchError(f"{run_dir} is not a run directory (no recipe.yaml); pass the output_dir of a `workbench train` run")
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["train"] = {}  # training arguments play no part in evaluation
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    return recipe_from_dict(data, source=str(path))


def policy_reference(recipe: Recipe, cfg: EvalConfig) -> str:
    """What the policy is compared with for KL and the implicit reward: the model it started from, unless set."""
    return cfg.reference or recipe.reference.name_or_path or recipe.model.name_or_path


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    inputs: EvalInputs | None = None,
    baseline: Samples | None = None,
    cfg: EvalConfig | None = None,
    fingerprint: str | None = None,
    scorers: dict[str, Callable[..., list[float]]] | None = None,
    shared: Shared | None = None,
) -> dict[str, Any]:
    """Evaluate the policy in `run_dir/model`; write eval.json and eval_samples.jsonl; log to the run's W&B summary.

    `inputs`, `baseline`, `cfg`, `scorers` and `shared` let a comparison share one set of prompts, baseline
    samples, settings, loaded scorers and the reference's log-probs of the held-out pairs.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    run_dir = Path(run_dir)
    recipe = run_recipe(run_dir, overrides)
    cfg = cfg or recipe.eval
    refuse_sampling(cfg.generation, EVAL_SAMPLING, str(run_dir / "recipe.yaml"))
    if recipe.method not in POLICY_METHODS:
        raise WorkbenchError(
            f"{run_dir} is a `{recipe.method}` run; `workbench eval` evaluates policies ({', '.join(POLICY_METHODS)}). "
            "A reward model's held-out accuracy is in its metrics.jsonl (eval/accuracy)"
        )
    model_dir = run_dir / "model"
    if not (model_dir / "config.json").is_file() and not (model_dir / "adapter_config.json").is_file():
        raise WorkbenchError(f"{run_dir} has no trained model (model/ is missing); did the run complete? see its manifest.json")
    tokenizer = load_tokenizer(dataclasses.replace(recipe.model, name_or_path=str(model_dir)))
    if inputs is None:
        inputs = eval_inputs(recipe, tokenizer)
        for f in inputs.shortfalls:
            log.warning(f["message"])
    scorers = scorers if scorers is not None else scorers_for(cfg, recipe, inputs.max_length)
    results = evaluate_model(
        model_dir,
        run_dir,
        name=recipe.tracking.name or run_dir.name,
        method=recipe.method,
        reference=policy_reference(recipe, cfg),
        tokenizer=tokenizer,
        inputs=inputs,
        cfg=cfg,
        scorers=scorers,
        shared=shared,
        baseline=baseline,
        fingerprint=fingerprint,
    )
    log_summary(run_dir, results)
    return results


def evaluate_model(
    model_dir: str | Path,
    out_dir: Path,
    *,
    name: str,
    method: str,
    reference: str,
    tokenizer: Any,
    inputs: EvalInputs,
    cfg: EvalConfig,
    scorers: dict[str, Callable[..., list[float]]],
    shared: Shared | None = None,
    baseline: Samples | None = None,
    fingerprint: str | None = None,
    own_samples: bool = False,
) -> dict[str, Any]:
    """Evaluate one model (a run's policy, or a comparison's `eval.baseline` itself); write `out_dir`/eval.json and
    eval_samples.jsonl. Costs come from `out_dir`/manifest.json when it is a run directory. `own_samples`: sample
    even when the model is the baseline (a control, sampled with another seed)."""
    refuse_sampling(cfg.generation, EVAL_SAMPLING, str(out_dir))
    judge = judge_of(cfg, scorers)
    shared = shared if shared is not None else Shared()
    baseline_path = cfg.baseline or reference
    baseline = baseline or shared.baselines.get((baseline_path, id(scorers)))  # scored by these very scorers
    if baseline is None and judge is not None:
        baseline = baseline_samples(baseline_path, tokenizer, inputs, cfg, scorers)
    if baseline is not None:
        shared.baselines.setdefault((baseline_path, id(scorers)), baseline)
    if baseline is not None and same_model(model_dir, baseline_path) and not own_samples:
        # the baseline policy itself: its samples (same prompts, sampling and seed) and scores are the baseline's
        samples = dataclasses.replace(baseline, scores=dict(baseline.scores), per_sample={})
        model = load_policy(str(model_dir), tokenizer).to(device())
        policy_lp = log_probs(model, tokenizer, inputs, samples, cfg)
        del model
    else:
        samples, policy_lp = run_policy(str(model_dir), tokenizer, inputs, cfg)
        score(samples, inputs, scorers)
    if same_model(model_dir, reference):
        reference_lp = policy_lp  # the reference's log-probs are the policy's own
    else:
        reference_lp = reference_log_probs(reference, tokenizer, inputs, samples, cfg, shared.reference_pairs.get(reference))
    if inputs.pairs:
        shared.reference_pairs.setdefault(reference, reference_lp)
    results = {
        "name": name,
        "method": method,
        **quality_metrics(samples, policy_lp, reference_lp, baseline, judge),
        "num_prompts": len(inputs.prompts),
        "samples_per_prompt": cfg.samples_per_prompt,
        "num_pairs": len(inputs.pairs),
        **cost_metrics(out_dir),
    }
    details = {
        "policy": str(model_dir),
        "reference": reference,
        "baseline": baseline_path,
        "win_rate_judge": judge,
        "scorers": sorted(scorers),
        "num_prompts": len(inputs.prompts),
        "num_samples": len(samples.texts),
        "samples_per_prompt": cfg.samples_per_prompt,
        "num_pairs": len(inputs.pairs),
        "inputs_fingerprint": inputs.fingerprint,
        "settings": dataclasses.asdict(cfg),
        "eval_fingerprint": fingerprint,
    }
    refuse_non_finite(results, str(model_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "eval.json", {"metrics": results, "details": details})
    write_jsonl(out_dir / "eval_samples.jsonl", samples.to_rows(inputs.prompts))
    return results


def log_summary(run_dir: Path, results: dict[str, Any]) -> None:
    """Add `eval/<metric>` to the W&B summary of the run that trained the policy (same run id, offline or online)."""
    info = read_json(run_dir / "manifest.json").get("wandb") or {}
    if not info.get("id") or info.get("mode") == "disabled":
        return
    import wandb
    import yaml

    tracking = (yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8")) or {}).get("tracking") or {}
    run = wandb.init(
        id=info["id"],
        resume="allow",
        project=tracking.get("project"),
        entity=tracking.get("entity"),
        dir=str(run_dir),
        mode=info.get("mode", "offline"),
        reinit="finish_previous",
    )
    run.summary.update({f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    run.finish()


def describe(results: dict[str, Any]) -> str:
    """A short human-readable view of eval.json's metrics."""
    return dump_yaml({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()})
