"""`workbench validate` catches what a run would fail on, without loading weights: the real TRL
config's own checks, hardware precision, reward sources, every data row, the data a method needs.
And `train` runs the same checks before the W&B run starts. Exit 2, one sentence, no traceback."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import read_yaml, write_yaml

from workbench.cli import main

PAIRS = [{"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(12)]


def write_jsonl(path: Path, rows: list[dict], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def recipe_file(tmp_path: Path, tiny_model: Path, data: Path | None = None, **sections) -> Path:
    data = data or write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": str(tiny_model)},
        "data": {"sources": [{"path": str(data)}], "max_length": 32, "eval_split": 0.0},
        "train": {"per_device_train_batch_size": 2, "max_steps": 1},
        "tracking": {"mode": "offline"},
        "output_dir": str(tmp_path / "run"),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return write_yaml(tmp_path / "recipe.yaml", recipe)


def validate_err(path: Path, capsys, *args: str) -> str:
    code = main(["validate", str(path), *args])
    captured = capsys.readouterr()
    assert code == 2, captured.out[-2000:]
    assert "Traceback" not in captured.err
    return captured.err


# ----------------------------------------------------------------------------------------------
# train: checked by the real TRL config class


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"loss_type": ["sigmoidd"]}, "`train.loss_type: ['sigmoidd']`: 'sigmoidd' is not one of sigmoid, hinge"),
        ({"lr_scheduler_type": "cosinee"}, "`train.lr_scheduler_type: cosinee`: cosinee is not a valid SchedulerType"),
        ({"per_device_train_batch_size": 0}, "`train.per_device_train_batch_size: 0` must be at least 1"),
        ({"learning_rate": -1}, "`train.learning_rate: -1.0` must not be negative"),
        ({"optim": "adamww"}, "`train.optim: adamww`: adamww is not a valid OptimizerNames"),
    ],
    ids=["loss_type", "scheduler", "batch0", "negative_lr", "optim"],
)
def test_trl_config_errors_name_the_recipe_key(tmp_path, tiny_model, capsys, train, expected):
    err = validate_err(recipe_file(tmp_path, tiny_model, train=train), capsys)
    assert expected in err
    assert "1 problem:" in err


def test_misspelt_choice_gets_a_suggestion(tmp_path, tiny_model, capsys):
    err = validate_err(
        recipe_file(tmp_path, tiny_model, train={"lr_scheduler_type": "cosinee", "loss_type": ["sigmoidd"]}), capsys
    )
    assert "did you mean 'cosine'?" in err and "did you mean 'sigmoid'?" in err


def test_bf16_on_a_machine_without_gpu(tmp_path, tiny_model, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = validate_err(recipe_file(tmp_path, tiny_model, train={"bf16": True}), capsys)
    assert "`train.bf16: true` needs a CUDA GPU, and this machine has none" in err
    err = validate_err(recipe_file(tmp_path, tiny_model, train={"fp16": True}), capsys)  # TRL itself accepts fp16 on CPU
    assert "`train.fp16: true` needs a CUDA GPU" in err


def test_valid_recipe_prints_the_effective_global_batch(tmp_path, tiny_model, capsys):
    path = recipe_file(tmp_path, tiny_model, train={"per_device_train_batch_size": 3, "gradient_accumulation_steps": 2})
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 (micro batch) x 2 (accumulation) x 1 (processes) = 6 pairs per optimizer step" in out
    assert "data: 12 rows read, 12 valid, 0 invalid" in out
    assert not (tmp_path / "run").exists()


def test_qlora_under_zero3_is_refused(tmp_path, tiny_model, capsys):
    repo = Path(__file__).resolve().parents[1]
    path = recipe_file(tmp_path, tiny_model, model={"quantization": "4bit", "lora": {"r": 4}})
    err = validate_err(path, capsys, "--accelerate-config", str(repo / "accelerate_configs" / "cpu_zero3.yaml"))
    assert "`model.quantization: 4bit` cannot be used with DeepSpeed ZeRO stage 3" in err


# ----------------------------------------------------------------------------------------------
# reward sources


def test_reward_function_that_cannot_be_imported(tmp_path, tiny_model, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    path = recipe_file(tmp_path, tiny_model, prompts, method="ppo", reward_model={"function": "no_such_mod:score"}, train={})
    err = validate_err(path, capsys)
    assert "`reward_model.function`: reward function 'no_such_mod:score': cannot import no_such_mod" in err


def test_reward_function_with_the_wrong_signature(tmp_path, tiny_model, capsys, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def score(texts):\n    return [0.0 for _ in texts]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    path = recipe_file(tmp_path, tiny_model, prompts, method="ppo", reward_model={"function": "my_rewards:score"}, train={})
    err = validate_err(path, capsys)
    assert "`reward_model.function`: my_rewards:score cannot be called as f(prompts, completions, **kwargs)" in err


def test_reward_model_directory_without_a_classification_head(tmp_path, tiny_model, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    path = recipe_file(tmp_path, tiny_model, prompts, method="ppo", reward_model={"name_or_path": str(tiny_model)}, train={})
    err = validate_err(path, capsys)
    assert f"`reward_model.name_or_path`: '{tiny_model}' is not a sequence-classification model" in err
    assert "(config.json architectures: LlamaForCausalLM)" in err


# ----------------------------------------------------------------------------------------------
# data: every row read, what each method needs


def test_a_bad_row_far_into_the_file_is_found(tmp_path, tiny_model, capsys):
    data = tmp_path / "pairs.jsonl"
    lines = [json.dumps(r) for r in PAIRS[:4]] + ['{"prompt": "x", "chosen": "y"'] + [json.dumps(r) for r in PAIRS[4:]]
    data.write_text("\n".join(lines) + "\n")
    err = validate_err(recipe_file(tmp_path, tiny_model, data), capsys)
    assert f"{data}:5:30: not valid JSON (Expecting ',' delimiter)" in err  # line 5 ends at column 29


@pytest.mark.parametrize("method", ["ppo", "rejection_sampling"])
def test_prompt_only_data_is_accepted_for_online_methods(tmp_path, tiny_model, capsys, method):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"say something {i}"} for i in range(5)])
    path = recipe_file(
        tmp_path, tiny_model, prompts, method=method, reward_model={"function": "workbench.data.synthetic:vowel_reward"}, train={}
    )
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert "data: 5 rows read, 5 valid, 0 invalid (prompt records)" in capsys.readouterr().out


def test_prompt_only_data_is_refused_for_dpo_with_a_sentence(tmp_path, tiny_model, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    err = validate_err(recipe_file(tmp_path, tiny_model, prompts), capsys)
    assert f"{prompts}: a `prompt` source has no chosen/rejected for a preference method" in err


# ----------------------------------------------------------------------------------------------
# unreadable files (issue 13, item 7): one sentence naming the file (and line)


def test_truncated_gzip_is_caught_by_validate_and_train(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl.gz", PAIRS * 50, opener=gzip.open)
    blob = data.read_bytes()
    data.write_bytes(blob[: len(blob) // 2])
    path = recipe_file(tmp_path, tiny_model, data)
    err = validate_err(path, capsys)
    assert f"{data}: the gzip file is truncated or corrupt" in err
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{data}: the gzip file is truncated or corrupt" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "manifest.json").exists()  # checks ran before the tracker started
    assert not (tmp_path / "run" / "wandb").exists()


def test_invalid_utf8_names_the_line(tmp_path, tiny_model, capsys):
    data = tmp_path / "pairs.jsonl"
    lines = [json.dumps(r).encode() for r in PAIRS[:5]]
    lines[2] = b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'
    data.write_bytes(b"\n".join(lines) + b"\n")
    err = validate_err(recipe_file(tmp_path, tiny_model, data), capsys)
    assert f"{data}:3: not valid UTF-8" in err


def test_empty_file_is_named_by_train(tmp_path, tiny_model, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    path = recipe_file(tmp_path, tiny_model, data)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{data}: the file holds no rows" in err and "Traceback" not in err


def test_utf8_bom_is_accepted(tmp_path, tiny_model, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in PAIRS).encode())
    csv = tmp_path / "pairs.csv"
    csv.write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\nq?,good,bad\n")
    for source in (data, csv):
        path = recipe_file(tmp_path, tiny_model, source)
        assert main(["validate", str(path)]) == 0, capsys.readouterr().err
        assert "0 invalid" in capsys.readouterr().out


def test_bad_data_stops_train_before_the_wandb_run(tmp_path, tiny_model, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS[:4]) + "{broken\n")
    path = recipe_file(tmp_path, tiny_model, data)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:5:2: not valid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("generation", "sentence"),
    [
        (
            {"temperature": 0.0},
            "greedy decoding has none (`eval.generation.temperature: 0.0`); set `eval.generation.temperature` > 0",
        ),
        ({"top_p": 0.9}, "not of nucleus sampling (`eval.generation.top_p: 0.9`)"),
        ({"top_k": 20}, "not of top-k sampling (`eval.generation.top_k: 20`)"),
    ],
    ids=["greedy", "top_p", "top_k"],
)
def test_eval_sampling_without_modelled_log_probs_is_refused(tmp_path, tiny_model, capsys, generation, sentence):
    """The evaluation's KL needs the log-probs of what it sampled: refused like PPO's rollouts, in a run recipe and a comparison."""
    err = validate_err(recipe_file(tmp_path, tiny_model, eval={"generation": generation}), capsys)
    assert "1 problem:" in err and sentence in err
    comparison = {
        "output_dir": str(tmp_path / "cmp"),
        "base": read_yaml(recipe_file(tmp_path, tiny_model)),
        "eval": {"generation": generation},
        "stages": {"sft": {"method": "sft"}},
    }
    del comparison["base"]["method"], comparison["base"]["output_dir"], comparison["base"]["train"]
    write_yaml(tmp_path / "cmp.yaml", comparison)
    err = validate_err(tmp_path / "cmp.yaml", capsys)
    assert "1 problem:" in err and sentence in err


def test_launch_runs_the_checks_before_spawning(tmp_path, tiny_model, capsys, monkeypatch):
    import workbench.launch

    monkeypatch.setattr(workbench.launch, "launch", lambda *a, **k: pytest.fail("processes were spawned"))
    repo = Path(__file__).resolve().parents[1]
    path = recipe_file(tmp_path, tiny_model, model={"quantization": "4bit", "lora": {"r": 4}})
    assert main(["launch", str(path), "--accelerate-config", str(repo / "accelerate_configs" / "cpu_zero3.yaml")]) == 2
    assert "cannot be used with DeepSpeed ZeRO stage 3" in capsys.readouterr().err


def test_cut_parquet_file_is_named(tmp_path, tiny_model, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(PAIRS), data)
    data.write_bytes(data.read_bytes()[:-40])
    err = validate_err(recipe_file(tmp_path, tiny_model, data), capsys)
    assert f"{data}: not a readable parquet file" in err


def test_documented_choices_are_read_from_the_trl_field_help():
    from trl import DPOConfig

    from workbench.config.train_args import allowed_values

    choices = allowed_values(DPOConfig, "loss_type")
    assert choices[:3] == ["sigmoid", "hinge", "ipo"] and "sigmoid_norm" in choices and len(choices) == 15
    assert allowed_values(DPOConfig, "beta") is None


# ----------------------------------------------------------------------------------------------
# tracking.mode online: a W&B key or server that cannot be used is a problem of validate (and of train, before it starts)


def test_online_tracking_with_an_unusable_key_or_server_fails_validate_in_one_sentence(tmp_path, tiny_model, capsys, monkeypatch):
    import socket
    import time

    path = recipe_file(tmp_path, tiny_model, tracking={"mode": "online"})
    monkeypatch.setenv("WANDB_API_KEY", "not-a-key")
    err = validate_err(path, capsys)
    assert "1 problem:" in err
    assert "`tracking.mode: online`: WANDB_API_KEY is not a W&B API key (API key must have 40+ characters, has 5.)" in err
    assert "not-a-key" not in err

    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    t0 = time.time()
    err = validate_err(path, capsys)
    assert time.time() - t0 < 30
    assert f"`tracking.mode: online`: cannot reach the W&B server {url}" in err
    assert main(["train", str(path)]) == 2  # train makes the same check before the W&B run and any weights
    assert "cannot reach the W&B server" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# the verdict comes first (and last); the resolved recipe only on request


def validate_output(path: Path, *args: str) -> tuple[int, list[str]]:
    """`workbench validate` as a user sees it: stdout and stderr in the order printed."""
    import os
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "workbench", "validate", str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "WORKBENCH_CACHE": str(path.parent / "cache")},
    )
    return res.returncode, [line for line in res.stdout.splitlines() if line.strip()]


def test_validate_puts_the_verdict_and_problems_first_and_the_verdict_last(tmp_path, tiny_model):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS[:4]) + '{"prompt": "q", "chosen": "a"}\n')
    path = recipe_file(tmp_path, tiny_model, data, train={"loss_type": ["sigmoidd"]})
    code, lines = validate_output(path)
    assert code == 2
    assert lines[0] == f"{path}: recipe not valid, 2 problems:"
    assert "'sigmoidd' is not one of" in lines[1] and f"{data}:5" in lines[2]
    assert lines[-1] == f"{path}: recipe not valid (2 problems, listed at the top)"
    assert not any(line.startswith(("resolved recipe:", "output_dir:", "method:")) for line in lines)  # no recipe dump
    assert "Traceback" not in "\n".join(lines)

    ok = recipe_file(tmp_path, tiny_model)
    code, lines = validate_output(ok)
    assert code == 0 and lines[0] == lines[-1] == f"{ok}: recipe OK"
    assert any(line.startswith("global batch:") for line in lines) and not any(line.startswith("method:") for line in lines)
    assert "W&B: offline (recipe tracking.mode)" in lines

    code, shown = validate_output(ok, "--show-recipe")
    assert code == 0 and shown[0] == shown[-1] == f"{ok}: recipe OK"
    start = shown.index("resolved recipe:")
    assert start > shown.index(next(line for line in shown if line.startswith("global batch:")))  # after the checks
    assert "method: dpo" in shown[start:] and f"output_dir: {tmp_path / 'run'}" in shown[start:]


def test_the_decoded_example_says_when_the_chat_template_is_not_applied(tmp_path, tiny_model, capsys):
    """CSV cells are plain text, so CSV pairs are tokenized without the model's chat template, while conversational
    JSON Lines are templated: the decoded example says which, since the two train differently."""
    csv = tmp_path / "pairs.csv"
    csv.write_text("prompt,chosen,rejected\n" + "".join(f"question {i}?,good answer {i},bad {i}\n" for i in range(6)))
    assert main(["validate", str(recipe_file(tmp_path, tiny_model, csv))]) == 0
    out = capsys.readouterr().out
    assert (
        "note: this prompt is plain text, so it is tokenized as it is, without the model's chat template (only "
        "message lists, such as conversational JSON Lines, are templated); give the rows as messages to train "
        "in the chat format" in out
    )
    chat = tmp_path / "chat.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"question {i}?"}], "chosen": f"good answer {i}", "rejected": f"bad {i}"}
        for i in range(6)
    ]
    write_jsonl(chat, rows)
    assert main(["validate", str(recipe_file(tmp_path, tiny_model, chat))]) == 0
    out = capsys.readouterr().out
    assert "example pair" in out and "chat template" not in out


GUARD = """
import os, socket, sys

def refuse(*args, **kwargs):
    sys.stderr.write(f"NETWORK ATTEMPT {args[:2]}\\n")
    sys.stderr.flush()
    os._exit(99)

socket.getaddrinfo = refuse
socket.create_connection = refuse
socket.socket.connect = lambda self, address: refuse(address)
from workbench.cli import main
sys.exit(main(["validate", sys.argv[1]]))
"""


def test_missing_local_data_is_reported_without_any_network_call(tmp_path):
    """A user's clone has no ../shared: each path-like source that does not exist is a missing file at once, and
    the rest of validate (the hub model's memory plan included) reaches for no network first. The hub is not
    told to stay offline here, as it is not on a user's machine; any connection attempt ends the process."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "mine").mkdir()
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},  # a hub id: its config would come from the hub
        "data": {
            "sources": [
                {"path": "../shared/data/hh-rlhf/helpful-base/test.jsonl.gz", "format": "hh-rlhf"},
                {"path": "corpora/hh/train"},  # two '/': no hub id
                {"path": "mine/pairs"},  # `mine/` is here: a missing saved dataset
            ]
        },
        "tracking": {"mode": "offline"},
        "output_dir": "runs/x",
    }
    write_yaml(tmp_path / "r.yaml", recipe)
    offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "WANDB_API_KEY", "WANDB_MODE")
    env = {k: v for k, v in os.environ.items() if k not in offline}
    env.update(PYTHONPATH=str(REPO), WORKBENCH_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-c", GUARD, "r.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert "NETWORK ATTEMPT" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 2, done.stderr[-3000:]
    for i, path in enumerate(["../shared/data/hh-rlhf/helpful-base/test.jsonl.gz", "corpora/hh/train", "mine/pairs"]):
        assert f"`data.sources.{i}.path`: '{path}' not found" in done.stderr
    assert "3 problems" in done.stderr
