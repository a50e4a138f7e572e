"""Load policies, references and reward models: explicit dtype, pad token, LoRA / QLoRA, safetensors only."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench.config import ModelConfig
from workbench.errors import WorkbenchError

log = logging.getLogger("workbench")

DTYPE_NAMES = ("bfloat16", "float16", "float32")


def torch_dtype(name: str) -> Any:
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def model_location_problem(name_or_path: str) -> str | None:
    """Why `name_or_path` cannot be a model, checked without loading weights; None if it looks fine."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():  # a model, or a LoRA adapter on its base
            return None
        return f"model directory '{name_or_path}' has no config.json (nor adapter_config.json)"
    if path.exists():
        return f"model path '{name_or_path}' is a file; give the directory holding config.json"
    first = name_or_path.split("/", 1)[0]
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or Path(first).is_dir():
        return f"model '{name_or_path}' not found (relative paths are resolved from {Path.cwd()}); build one with `workbench tiny-model DIR`"
    return None  # a hub id: checked when loaded


def checkpoint_dtype_name(cfg: ModelConfig) -> str | None:
    """The dtype the checkpoint declares in its config, if any."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else None


def resolve_dtype(requested: str, stored: str | None) -> str:
    """`auto` -> the checkpoint's own dtype (float32 when it declares none); warn on a lossy mismatch."""
    if requested == "auto":
        return stored if stored in DTYPE_NAMES else "float32"
    if stored in DTYPE_NAMES and stored != requested:
        lossy = {stored, requested} == {"bfloat16", "float16"}
        log.warning(
            "model weights are stored as %s but the recipe loads them as %s%s",
            stored,
            requested,
            " - bf16 weights loaded as fp16 overflow and ruin models; use bfloat16 or auto" if lossy else "",
        )
    return requested


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The model's tokenizer, with a pad token guaranteed (the EOS token when the checkpoint has none)."""
    from transformers import AutoTokenizer

    problem = model_location_problem(cfg.name_or_path)
    if problem:
        raise WorkbenchError(problem)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except OSError as exc:
        raise WorkbenchError(f"cannot load the tokenizer of '{cfg.name_or_path}': {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    return tokenizer


def _common_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "revision": cfg.revision,
        "trust_remote_code": cfg.trust_remote_code,
        "use_safetensors": True,
        "dtype": torch_dtype(resolve_dtype(cfg.dtype, checkpoint_dtype_name(cfg))),
    }
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.quantization:
        kwargs["quantization_config"] = quantization_config(cfg)
    return kwargs


def _sync_pad(model: Any, tokenizer: Any) -> Any:
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def load_causal_lm(cfg: ModelConfig, tokenizer: Any) -> Any:
    """A causal LM as the recipe describes it (dtype, attention, quantization), pad token in its config."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **_common_kwargs(cfg))
    except OSError as exc:
        raise WorkbenchError(f"cannot load model '{cfg.name_or_path}': {str(exc).splitlines()[0]}") from None
    return _sync_pad(model, tokenizer)


@contextlib.contextmanager
def plain_loading() -> Iterator[None]:
    """Load a whole, unpartitioned model even while a ZeRO-3 run is active.

    Under ZeRO-3 transformers creates every model inside DeepSpeed's partitioned init; a frozen
    model that is not then wrapped in a DeepSpeed engine would hold empty (size-0) parameters.
    """
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def load_reward_model(cfg: ModelConfig, tokenizer: Any, frozen: bool = False) -> Any:
    """A one-label sequence-classification model (decoder or encoder backbone) with pad_token_id set.

    frozen=True (scoring, not training): a whole copy on this process under every launch config.
    """
    from transformers import AutoModelForSequenceClassification

    try:
        with plain_loading() if frozen else contextlib.nullcontext():
            model = AutoModelForSequenceClassification.from_pretrained(cfg.name_or_path, num_labels=1, **_common_kwargs(cfg))
    except OSError as exc:
        raise WorkbenchError(f"cannot load reward model '{cfg.name_or_path}': {str(exc).splitlines()[0]}") from None
    return _sync_pad(model, tokenizer)


def quantization_config(cfg: ModelConfig) -> Any:
    """bitsandbytes config for QLoRA; refuses clearly where it cannot work."""
    import torch

    from workbench.method_checks import quantization_problems

    problems = quantization_problems(cfg)
    if problems:
        raise WorkbenchError(problems[0])
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def lora_config(cfg: ModelConfig, task_type: str) -> Any:
    """peft LoraConfig from `model.lora` (fields passed through), task type set by the method."""
    from peft import LoraConfig

    fields = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear", **(cfg.lora or {})}
    return LoraConfig(task_type=task_type, **fields)


def apply_lora(model: Any, cfg: ModelConfig, task_type: str) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.quantization:
        model = prepare_model_for_kbit_training(model)
    return get_peft_model(model, lora_config(cfg, task_type))


def load_policy(name_or_path: str, tokenizer: Any, dtype: str = "auto") -> Any:
    """A trained policy for inference (whole, under every launch config): a full model, or a LoRA adapter merged into its base."""
    with plain_loading():
        return _load_policy(name_or_path, tokenizer, dtype)


def _load_policy(name_or_path: str, tokenizer: Any, dtype: str) -> Any:
    if (Path(name_or_path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        try:
            model = AutoPeftModelForCausalLM.from_pretrained(name_or_path).merge_and_unload()
        except OSError as exc:
            raise WorkbenchError(f"cannot load the LoRA policy '{name_or_path}': {str(exc).splitlines()[0]}") from None
        return _sync_pad(model, tokenizer)
    problem = model_location_problem(name_or_path)
    if problem:
        raise WorkbenchError(problem)
    return load_causal_lm(ModelConfig(name_or_path=name_or_path, dtype=dtype), tokenizer)  # type: ignore[arg-type]
