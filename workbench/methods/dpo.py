"""DPO and its loss family on TRL's DPOTrainer, fed pre-tokenized pairs from the shared data layer."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from trl import DPOTrainer

from workbench.batch_order import ResumableLengthGrouping
from workbench.batching import length_sorted_batches
from workbench.cache import persisted_dataset
from workbench.config import ModelConfig, reference_rule
from workbench.data.schema import stable_hash
from workbench.methods import hf
from workbench.models import apply_lora, load_causal_lm
from workbench.packing import packed_calls

if TYPE_CHECKING:
    from workbench.context import RunContext, RunResult

log = logging.getLogger("workbench")


class PretokenizedDPOTrainer(ResumableLengthGrouping, DPOTrainer):
    """DPOTrainer that takes the data layer's token ids as they are (its truncation keeps prompt ends),
    counts reference forward passes (so reuse of cached reference log-probs is visible), and with
    `packing` runs every policy and reference forward padding-free (workbench/packing.py)."""

    reference_forward_batches = 0

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        if "prompt_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if "length" not in self._signature_columns:  # for train_sampling_strategy: group_by_length
            self._signature_columns = [*self._signature_columns, "length"]

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        """TRL's cached pass, run over the pairs in length-sorted batches (little padding), then put back in order."""
        if "length" not in dataset.column_names or len(dataset) == 0:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        order = [i for batch in length_sorted_batches(dataset["length"], batch_size) for i in batch]
        inverse = [0] * len(order)
        for position, i in enumerate(order):
            inverse[i] = position
        # select() fingerprints are deterministic, so TRL's cache (keyed by fingerprint) still finds later runs
        return super()._precompute_ref_logps(dataset.select(order), name, batch_size).select(inverse)

    def _packed(self, model: Any) -> Any:
        if not getattr(self.args, "packing", False):
            return contextlib.nullcontext()
        return packed_calls(model, self.model, self.ref_model)

    def _compute_loss(self, model: Any, inputs: Any, return_outputs: bool) -> Any:
        with self._packed(model):
            return super()._compute_loss(model, inputs, return_outputs)

    def compute_ref_log_probs(self, model: Any, inputs: Any) -> Any:
        self.reference_forward_batches += 1
        with self._packed(model):
            return super().compute_ref_log_probs(model, inputs)


def token_dataset(pairs: list[Any]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt_ids": [p.prompt_ids for p in pairs],
            "chosen_ids": [p.chosen_ids for p in pairs],
            "rejected_ids": [p.rejected_ids for p in pairs],
            "length": [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs],
        }
    )


def dpo_dataset(pairs: list[Any], ctx: RunContext) -> Any:
    """In memory; or, when reference log-probs are precomputed, stored by content in the cache so that
    TRL's reference cache (keyed by dataset fingerprint and reference weights) is found by later runs."""
    if not ctx.recipe.reference.precompute_log_probs:
        return token_dataset(pairs)
    key = stable_hash([[p.prompt_ids, p.chosen_ids, p.rejected_ids] for p in pairs])[:24]
    return persisted_dataset(lambda: token_dataset(pairs), "dpo-pairs", key, ctx.is_main)


def policy_and_reference(ctx: RunContext, args: Any) -> tuple[Any, Any]:
    """The policy to train (LoRA-wrapped when asked) and its reference, recorded in the manifest (DPO and KTO)."""
    recipe = ctx.recipe
    model = load_causal_lm(recipe.model, ctx.tokenizer)
    if recipe.model.lora is not None:
        model = apply_lora(model, recipe.model, task_type="CAUSAL_LM")
    ref, ref_kind = reference_model(ctx, args)
    ctx.tracker.update_manifest(reference=ref_kind)
    return model, ref


def reference_model(ctx: RunContext, args: Any) -> tuple[Any, str]:
    """The frozen reference by the registry's rule, and how it was chosen (recorded in the manifest): a separate
    model is loaded here; TRL makes the frozen copy, disables the adapters or precomputes the log-probs itself."""
    choice = reference_rule(ctx.recipe, ctx.recipe.train)
    if not choice.separate:
        return None, choice.describe()
    model = ctx.recipe.model
    cfg = ModelConfig(name_or_path=choice.name_or_path or "", dtype=model.dtype, trust_remote_code=model.trust_remote_code)
    return load_causal_lm(cfg, ctx.tokenizer), choice.describe()


def run(ctx: RunContext) -> RunResult:
    from workbench.context import RunResult

    recipe = ctx.recipe
    args = hf.training_args(
        ctx,
        max_length=recipe.data.max_length,
        precompute_ref_log_probs=recipe.reference.precompute_log_probs,
    )
    if args.fp16:
        log.warning("fp16 with DPO is a known source of NaN losses (log-prob sums overflow); prefer bf16")
    model, ref = policy_and_reference(ctx, args)
    eval_pairs = ctx.data.tokenized.get("eval") or []
    trainer = PretokenizedDPOTrainer(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=dpo_dataset(ctx.data.tokenized["train"], ctx),
        eval_dataset=dpo_dataset(eval_pairs, ctx) if eval_pairs else None,
        processing_class=ctx.tokenizer,
        callbacks=hf.callbacks(ctx),
    )
    ctx.tracker.update_manifest(reference_forward_batches_before_training=trainer.reference_forward_batches)
    hf.train(trainer, ctx)
    if eval_pairs:
        hf.evaluate_at_end(trainer, ctx)
    model_dir = hf.export(trainer, ctx)
    return RunResult(ctx.run_dir, model_dir, hf.final_metrics(trainer), train_tokens=hf.tokens_seen(trainer))
