"""Reward models: metric functions by hand, learning the synthetic rule, export, margins, encoders."""

from __future__ import annotations

import json
import math

import pytest
from conftest import edit_yaml, run_ok, write_yaml
from test_train import read_metrics

from workbench.batching import left_pad, length_sorted_batches
from workbench.metrics import length_baseline_accuracy, mean_std, pairwise_accuracy


def test_pairwise_accuracy_counts_ties_half():
    # pairs: 1>0 win, 2=2 tie, 3<4 loss -> (1 + 0.5 + 0) / 3
    assert pairwise_accuracy([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(0.5)
    assert pairwise_accuracy([5.0], [1.0]) == 1.0
    assert math.isnan(pairwise_accuracy([], []))
    with pytest.raises(ValueError):
        pairwise_accuracy([1.0], [])


def test_length_baseline_and_mean_std():
    # chosen longer in 2 pairs, shorter in 1, equal in 1 -> (2 + 0 + 0.5) / 4
    assert length_baseline_accuracy([10, 8, 3, 5], [4, 2, 9, 5]) == pytest.approx(0.625)
    # values 1, 3: mean 2, population std 1
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)


def test_length_sorted_batches_and_left_padding():
    assert length_sorted_batches([3, 9, 1, 7, 5], 2) == [[1, 3], [4, 0], [2]]
    assert length_sorted_batches([2, 2, 2], 2) == [[0, 1], [2]]  # ties keep their order
    assert left_pad([[5, 6, 7], [8]], 0) == ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])


def reward_recipe(tmp_path, model, name, **train):
    recipe = {
        "method": "reward",
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"sources": [{"synthetic": {"num_pairs": 640, "seed": 1}}], "eval_split": 0.2, "max_length": 48},
        "train": {
            "learning_rate": 2e-3,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 66,  # 132 eval pairs in equal batches: TRL's eval/accuracy averages batch means
            "num_train_epochs": 3,
            "logging_steps": 10,
            "save_steps": 1000,
            "gradient_checkpointing": False,
            **train,
        },
        "tracking": {"mode": "disabled"},
        "output_dir": str(tmp_path / name),
        "seed": 0,
    }
    return write_yaml(tmp_path / f"{name}.yaml", recipe)


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("rm")
    run_ok(["train", str(reward_recipe(tmp, tiny_model, "rm"))])
    return tmp / "rm"


@pytest.mark.slow
def test_reward_model_learns_the_rule_and_beats_length(reward_run):
    final = {}
    for line in read_metrics(reward_run):
        final.update(line)
    assert final["eval/accuracy"] >= 0.8  # the vowel rule is learnable by a 2-layer model
    assert final["eval/accuracy_ties_half"] == pytest.approx(final["eval/accuracy"], abs=0.02)
    assert final["eval/accuracy"] > final["eval/length_baseline_accuracy"] + 0.2
    for key in ("eval/margin", "eval/reward_std", "eval/chosen_reward_mean", "eval/rejected_reward_mean"):
        assert key in final
    assert final["eval/chosen_reward_mean"] > final["eval/rejected_reward_mean"]


@pytest.mark.slow
def test_reward_export_keeps_head_pad_and_training_stats(reward_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(reward_run / "model")
    tok = AutoTokenizer.from_pretrained(reward_run / "model")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    assert isinstance(model.config.reward_mean, float) and model.config.reward_std > 0
    assert_scores_as_logged(model, tok, reward_run)


def assert_scores_as_logged(model, tok, run):
    """The reloaded model scores the run's held-out split exactly as the trained one did (its logged means)."""
    from datasets import load_from_disk

    from workbench.data.formatting import TokenizationSettings, tokenize_pair
    from workbench.methods.reward import pair_scores

    pairs = [tokenize_pair(tok, r, TokenizationSettings(48, 24)) for r in load_from_disk(str(run / "data" / "eval"))]
    chosen, rejected = pair_scores(model, pairs, tok.pad_token_id, 64)
    logged = {}
    for line in read_metrics(run):
        logged.update(line)
    assert mean_std(chosen)[0] == pytest.approx(logged["eval/chosen_reward_mean"], abs=1e-4)
    assert mean_std(rejected)[0] == pytest.approx(logged["eval/rejected_reward_mean"], abs=1e-4)


@pytest.mark.slow
def test_lora_reward_model_exports_a_plain_scorer_with_its_stats(tmp_path, tiny_model):
    """A LoRA reward model (a fresh one-label head on the backbone) is exported merged: model/ loads as a plain
    sequence-classification model with one label, its reward mean/std and pad id, and scores the held-out pairs
    exactly as the trained adapter did; the adapter itself is kept in model/adapter/."""
    from transformers import AutoTokenizer

    from workbench.config import ModelConfig
    from workbench.models import load_reward_model

    path = reward_recipe(tmp_path, tiny_model, "lora", num_train_epochs=1, per_device_eval_batch_size=66)
    with edit_yaml(path) as recipe:
        recipe["model"]["lora"] = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"}
    run_ok(["train", str(path)])
    run = tmp_path / "lora"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["export_check"]["ok"], manifest.get("error")
    assert (run / "model" / "adapter" / "adapter_config.json").is_file()
    assert not (run / "model" / "adapter_config.json").exists()  # model/ itself is a whole model
    tok = AutoTokenizer.from_pretrained(run / "model")
    model = load_reward_model(ModelConfig(name_or_path=str(run / "model")), tok, frozen=True)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    assert isinstance(model.config.reward_mean, float) and model.config.reward_std > 0
    assert_scores_as_logged(model, tok, run)


@pytest.mark.slow
def test_margin_column_flows_into_the_loss(tmp_path, tiny_model):
    data = tmp_path / "m.jsonl"
    rows = [{"prompt": f"Describe item {i}.", "chosen": "aurora audio", "rejected": "rhythm crypts"} for i in range(32)]
    losses = {}
    for margin in (0.0, 5.0):
        data.write_text("".join(json.dumps({**r, "margin": margin}) + "\n" for r in rows))
        path = reward_recipe(tmp_path, tiny_model, f"margin{int(margin)}", max_steps=1, logging_steps=1, num_train_epochs=1)
        with edit_yaml(path) as recipe:
            recipe["data"] = {"sources": [{"path": str(data)}], "eval_split": 0.0, "max_length": 32}
        run_ok(["train", str(path)])
        losses[margin] = read_metrics(tmp_path / f"margin{int(margin)}")[0]["train/loss"]
    # same initial model and batch: -logsigmoid(d - 5) > -logsigmoid(d) for any reward difference d
    assert losses[5.0] > losses[0.0] + 1.0


def test_partial_margin_column_is_an_error(tmp_path):
    from workbench.config import DataConfig, SourceConfig
    from workbench.data.pipeline import prepare
    from workbench.errors import DataError

    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c", "margin": 1})
        + "\n"
        + json.dumps({"prompt": "x", "chosen": "y", "rejected": "z"})
        + "\n"
    )
    with pytest.raises(DataError, match=r"1 of 2 pairs have a 'margin' but .*p.jsonl:2 has none"):
        prepare(DataConfig(sources=[SourceConfig(path=str(path))], eval_split=0.0), seed=0)
    path.write_text(
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"})
        + "\n"
        + json.dumps({"prompt": "x", "chosen": "y", "rejected": "z", "margin": "0.5"})
        + "\n"
    )
    prepared = prepare(DataConfig(sources=[SourceConfig(path=str(path))], on_invalid="drop", eval_split=0.0), seed=0)
    assert [(r.line, r.reason) for r in prepared.rejects] == [(1, "field 'margin' is not a number (got 'big')")]
    assert [r["margin"] for r in prepared.train] == [0.5]


def build_tiny_bert(out_dir):
    """A BERT-style encoder with a WordPiece tokenizer (CLS/SEP, no EOS, no chat template), offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    from workbench.data.synthetic import corpus

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        corpus() * 4 + ["user assistant : the end"],
        trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
        pad_token_id=fast.pad_token_id,
    )
    BertForSequenceClassification(config).save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


def test_encoder_tokenization_keeps_cls_and_the_end_of_long_dialogues(tmp_path):
    from workbench.config import ModelConfig
    from workbench.data.formatting import TokenizationSettings, tokenize_pair
    from workbench.models import load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=str(build_tiny_bert(tmp_path / "bert"))))
    assert tok.eos_token is None and not tok.chat_template
    row = {
        "prompt": [{"role": "user", "content": "river " * 60 + "the end"}],
        "chosen": [{"role": "assistant", "content": "aurora"}],
        "rejected": [{"role": "assistant", "content": "lynx"}],
    }
    pair = tokenize_pair(tok, row, TokenizationSettings(max_length=24, max_prompt_length=16))
    assert pair.prompt_truncated and len(pair.prompt_ids) == 16
    assert pair.prompt_ids[0] == tok.cls_token_id  # the classifier's token survives the cut
    assert tok.decode(pair.prompt_ids[1:]).endswith("the end assistant :")
    assert pair.chosen_ids[-1] == tok.sep_token_id and tok.decode(pair.chosen_ids[:-1]) == "aurora"


@pytest.mark.slow
def test_encoder_reward_model_trains_and_exports(tmp_path):
    from transformers import AutoModelForSequenceClassification

    bert = build_tiny_bert(tmp_path / "bert")
    path = reward_recipe(tmp_path, bert, "bert-rm", max_steps=3, logging_steps=1)
    run_ok(["train", str(path)])
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert-rm" / "model")
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.reward_std > 0
    assert [m["step"] for m in read_metrics(tmp_path / "bert-rm") if "train/loss" in m] == [1, 2, 3]
