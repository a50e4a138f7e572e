"""The data layer tokenizes real chat pairs exactly as TRL's DPOTrainer does (SmolLM2's tokenizer and template).

The premise of benchmarks/real_model_dpo.py (both sides train on the same token ids) and of handing TRL
pre-tokenized pairs: for whole (untruncated) conversational pairs, the workbench's prompt / chosen /
rejected ids equal those TRL's own `_prepare_dataset` makes. Uses the converted model under the cache when
`workbench fetch-model smollm2-135m` has run there (tests/test_real_model.py makes it), else skips.
"""

from __future__ import annotations

import pytest
from conftest import HH_TEST, need_shared


def test_whole_chat_pairs_tokenize_as_trl_does():
    need_shared()
    from workbench.cache import cache_root

    model_dir = cache_root() / "models" / "smollm2-135m"
    if not (model_dir / "tokenizer.json").is_file():
        pytest.skip(f"no converted SmolLM2 at {model_dir} (workbench fetch-model smollm2-135m {model_dir})")
    from transformers import AutoTokenizer
    from trl.trainer.dpo_trainer import _tokenize, common_prefix_length

    from workbench.config import DataConfig, ModelConfig, SourceConfig
    from workbench.data.formatting import TokenizationSettings, tokenize_pair
    from workbench.data.pipeline import prepare
    from workbench.models import load_tokenizer

    ours_tok = load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
    trl_tok = AutoTokenizer.from_pretrained(model_dir)
    rows = prepare(
        DataConfig(sources=[SourceConfig(path=str(HH_TEST), format="hh-rlhf")], on_invalid="drop", eval_split=0.0), 0
    ).train[:32]
    whole = TokenizationSettings(max_length=10**9, max_prompt_length=10**9)
    for row in rows:
        ours = tokenize_pair(ours_tok, row, whole)
        p = _tokenize(trl_tok, row["prompt"], add_generation_prompt=True)["input_ids"]
        pc = _tokenize(trl_tok, row["prompt"] + row["chosen"])["input_ids"]
        pr = _tokenize(trl_tok, row["prompt"] + row["rejected"])["input_ids"]
        n = min(common_prefix_length(p, pc), common_prefix_length(p, pr))
        assert (ours.prompt_ids, ours.chosen_ids, ours.rejected_ids) == (p[:n], pc[n:], pr[n:]), row["pair_id"]
        system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM"  # the template's default system turn
        assert ours_tok.decode(ours.prompt_ids).startswith(system)
        assert ours.chosen_ids[-2] == ours.rejected_ids[-2] == ours_tok.eos_token_id  # <|im_end|>, then "\n"


def test_a_long_hh_dialogue_is_cut_at_a_turn_of_the_chat_template():
    """SmolLM2's ChatML: a prompt over max_prompt_length keeps the template's system turn and whole later turns;
    before, it kept `<|im_start|>` followed by the middle of a message."""
    need_shared()
    from workbench.cache import cache_root

    model_dir = cache_root() / "models" / "smollm2-135m"
    if not (model_dir / "tokenizer.json").is_file():
        pytest.skip(f"no converted SmolLM2 at {model_dir} (workbench fetch-model smollm2-135m {model_dir})")
    from workbench.config import DataConfig, ModelConfig, SourceConfig
    from workbench.data.formatting import TokenizationSettings, prompt_ids, tokenize_pair
    from workbench.data.pipeline import prepare
    from workbench.models import load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
    rows = prepare(
        DataConfig(sources=[SourceConfig(path=str(HH_TEST), format="hh-rlhf")], on_invalid="drop", eval_split=0.0), 0
    ).train
    settings = TokenizationSettings(max_length=160, max_prompt_length=112)  # recipes/compare_smollm2_hh.yaml
    pairs = [(r, tokenize_pair(tok, r, settings)) for r in rows if len(prompt_ids(tok, r["prompt"])) > 112]
    long = [(r, p) for r, p in pairs if p.lengths[0] + max(p.lengths[1:]) > 160][:20]  # the prompt must be cut
    assert len(long) == 20
    whole_turns = 0
    for row, pair in long:
        text = tok.decode(pair.prompt_ids)
        assert pair.prompt_truncated and len(pair.prompt_ids) <= 112
        assert text.endswith("<|im_start|>assistant\n"), row["pair_id"]
        if text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"):
            whole_turns += 1
            assert "<|im_end|>\n<|im_start|>user\n" in text  # the system turn, then a whole user turn
        else:  # the last user turn alone is too long: its last tokens
            assert pair.prompt_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert whole_turns >= 10
