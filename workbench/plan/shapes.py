"""Model shapes from `config.json` alone: each model instantiated on the meta device (no weights are read)."""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError


@dataclass(frozen=True)
class Shape:
    """What the accounting needs from one model, read from its meta-device instance."""

    params: int  # unique parameters (tied embeddings counted once)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    largest_layer: int  # parameters of the largest module (DeepSpeed's own `model_to_params` rule)
    quantizable: int  # parameters in the decoder's Linear layers (what bitsandbytes quantizes)
    tied_embeddings: bool
    dtype: str | None  # the checkpoint's own dtype, from config.json


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def shape_of(model: Any, config: Any) -> Shape:
    """Shape of an instantiated (meta) model; counts exactly what `model.parameters()` yields."""
    import torch

    text = _text_config(config)
    hidden = int(text.hidden_size)
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantizable = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not output and m.weight.ndim == 2
    )
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    inp = model.get_input_embeddings()
    tied = output is not None and output.weight is inp.weight
    return Shape(
        params=sum(p.numel() for p in model.parameters()),
        layers=int(text.num_hidden_layers),
        hidden=hidden,
        intermediate=int(getattr(text, "intermediate_size", None) or 4 * hidden),
        heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        vocab=int(text.vocab_size),
        largest_layer=largest,
        quantizable=quantizable,
        tied_embeddings=tied,
        dtype=str(dtype).replace("torch.", "") if dtype is not None else None,
    )


HEAD_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "seq-cls": "AutoModelForSequenceClassification",
    "token-cls": "AutoModelForTokenClassification",
}


def meta_model(name_or_path: str, head: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model on the meta device, its config) from config.json alone: no weights are read."""
    import torch
    import transformers
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise WorkbenchError(
            f"cannot read the config.json of '{name_or_path}' ({str(exc).splitlines()[0]}); "
            "give a local model directory (or a hub id already in the cache)"
        ) from None
    if head != "causal-lm":
        config.num_labels = 1
    # torch's meta device, not accelerate's init_empty_weights: under transformers 5 the latter unties tied embeddings
    from workbench.models import plain_loading  # a meta model must not be built under zero.Init (collectives)

    with torch.device("meta"), plain_loading(), quiet():
        model = getattr(transformers, HEAD_CLASSES[head]).from_config(config, trust_remote_code=trust_remote_code)
    return model, config


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """transformers' and peft's deprecation notes while building meta models are not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@functools.lru_cache(maxsize=32)
def model_shape(name_or_path: str, head: str = "causal-lm", trust_remote_code: bool = False) -> Shape:
    model, config = meta_model(name_or_path, head, trust_remote_code)
    return shape_of(model, config)


@functools.lru_cache(maxsize=32)
def lora_trainable_params(name_or_path: str, head: str, lora_json: str, trust_remote_code: bool = False) -> int:
    """Exact LoRA parameter count: peft applied to the meta-device model (its default r/alpha/targets as models.py)."""
    from peft import get_peft_model

    from workbench.config import ModelConfig
    from workbench.models import lora_config

    model, _ = meta_model(name_or_path, head, trust_remote_code)
    task = {"causal-lm": "CAUSAL_LM", "seq-cls": "SEQ_CLS", "token-cls": "TOKEN_CLS"}[head]
    with quiet():
        peft_model = get_peft_model(model, lora_config(ModelConfig(lora=json.loads(lora_json)), task))
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
