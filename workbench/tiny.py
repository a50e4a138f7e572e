"""`workbench tiny-model`: a tiny Llama-style causal LM and a byte-level BPE tokenizer with a chat
template, built offline and deterministically, for tests, demos and benchmarks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]

# General text so that real dialogues (hh-rlhf, llmbar) tokenize into words, not bytes.
GENERAL_TEXT = """
Human: How do I bake bread at home? Assistant: Mix flour, water, salt and yeast, let the dough rise, then bake it.
Human: Can you help me write an email to my boss? Assistant: Sure. What would you like the email to say?
Human: What is the capital of France? Assistant: The capital of France is Paris.
I think you should talk to a doctor about that. It is important to be safe and kind to other people.
The answer depends on what you want to do. Here are some ideas: read a book, take a walk, call a friend.
Please explain the difference between weather and climate in simple words for a child.
Instruction: Rewrite the following sentence in the passive voice. Output: The letter was written by Mary.
Sorry, I don't know. Could you tell me more about the problem? Thank you for asking, that's a good question.
"""


def train_tokenizer(vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer on built-in text; deterministic for a fixed corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from workbench.data.synthetic import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = corpus() + [line for line in GENERAL_TEXT.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>", model_max_length=1024
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> Path:
    """Write config, safetensors weights, tokenizer and chat template to `out_dir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = train_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def weights_digest(model_dir: str | Path) -> str:
    """sha256 of the safetensors weights (determinism checks)."""
    h = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        h.update(path.read_bytes())
    return h.hexdigest()
