"""Data users actually have: several annotators' labels, prompts made of several fields, JSON
booleans as labels, CSV files with other column names, and an eval split that comes out empty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_yaml

from workbench.config import DataConfig, LabelSpec, SourceConfig
from workbench.data.pipeline import prepare, save
from workbench.errors import DataError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def annotated(a: list[int], i: int) -> dict:
    return {"instruction": f"task {i}", "input": f"text {i}", "output_1": f"one {i}", "output_2": f"two {i}"} | {
        f"annotator{k + 1}": v for k, v in enumerate(a)
    }


# PandaLM style: 0 = tie, 1 = output_1 better, 2 = output_2 better; three annotators per row.
VOTES = [[1, 1, 1], [2, 2, 1], [1, 2, 0], [0, 0, 1], [1, 1, 0], [2, 2, 2]]


def annotator_source(path: Path, on_tie: str = "drop") -> SourceConfig:
    spec = LabelSpec(label=["annotator1", "annotator2", "annotator3"], tie_value=0, on_tie=on_tie)
    return SourceConfig(path=str(path), format="labeled-pair", label=spec, prompt_template="{instruction}\n\n{input}")


def test_majority_of_annotators_with_ties_counted_and_dropped(tmp_path):
    data = write_jsonl(tmp_path / "panda.jsonl", [annotated(v, i) for i, v in enumerate(VOTES)])
    prepared = prepare(DataConfig(sources=[annotator_source(data)], eval_split=0.0), seed=0)
    rows = {r["line"]: r for r in prepared.train}
    assert sorted(rows) == [1, 2, 5, 6]  # lines 3 (1/2/0: no majority) and 4 (majority says tie) are ties
    assert (rows[1]["chosen"], rows[1]["rejected"]) == ("one 0", "two 0")
    assert (rows[2]["chosen"], rows[2]["rejected"]) == ("two 1", "one 1")  # 2 of 3 prefer output_2
    assert rows[1]["prompt"] == "task 0\n\ntext 0"
    assert prepared.report["labels"] == {"annotated": 6, "unanimous": 2, "majority": 2, "ties": 2, "ties_dropped": 2}
    assert prepared.report["dropped"]["by_reason"] == {
        "annotators tie (labels [1, 2, 0])": 1,
        "annotators tie (labels [0, 0, 1])": 1,
    }
    assert [r.line for r in prepared.rejects] == [3, 4]  # kept in rejects.jsonl, not lost
    from workbench.data.report import summary_lines

    assert "annotators: 6 rows: 2 unanimous, 2 by majority, 2 ties (2 dropped)" in summary_lines(prepared.report)


def test_ties_can_be_errors(tmp_path):
    data = write_jsonl(tmp_path / "panda.jsonl", [annotated(v, i) for i, v in enumerate(VOTES)])
    with pytest.raises(DataError, match=rf"{data}:3: annotators tie \(labels \[1, 2, 0\]\)"):
        prepare(DataConfig(sources=[annotator_source(data, on_tie="error")], eval_split=0.0), seed=0)


def test_prompt_template_names_a_missing_field_and_the_columns_found(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "chosen": "x", "rejected": "y"}])
    src = SourceConfig(path=str(data), prompt_template="{instruction}\n\n{inputs}")
    with pytest.raises(DataError) as info:
        prepare(DataConfig(sources=[src], eval_split=0.0), seed=0)
    assert (
        f"{data}:1: `prompt_template` needs column 'inputs', which the row lacks (columns: chosen, instruction, rejected)"
        in str(info.value)
    )


def test_json_booleans_as_labels(tmp_path):
    rows = [
        {"prompt": "p1", "a": "A1", "b": "B1", "a_better": True},
        {"prompt": "p2", "a": "A2", "b": "B2", "a_better": False},
    ]
    data = write_jsonl(tmp_path / "bool.jsonl", rows)
    spec = LabelSpec(prompt="prompt", first="a", second="b", label="a_better", first_value=True, second_value=False)
    prepared = prepare(DataConfig(sources=[SourceConfig(path=str(data), label=spec)], eval_split=0.0), seed=0)
    assert [(r["chosen"], r["rejected"]) for r in prepared.train] == [("A1", "B1"), ("B2", "A2")]
    # With the default 1 / 2 values a boolean is not silently read as 1 (True == 1 in Python).
    default = LabelSpec(prompt="prompt", first="a", second="b", label="a_better")
    with pytest.raises(
        DataError, match="label True is a boolean; set `label.first_value` and `label.second_value` to true/false"
    ):
        prepare(DataConfig(sources=[SourceConfig(path=str(data), format="labeled-pair", label=default)], eval_split=0.0), seed=0)


def test_csv_missing_column_names_the_columns_found_and_the_closest(tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("prompt,chosen_response,rejected\nq?,good,bad\n")
    with pytest.raises(DataError) as info:
        prepare(DataConfig(sources=[SourceConfig(path=str(data), format="preference")], eval_split=0.0), seed=0)
    assert (
        f"{data}:2: missing field 'chosen' (columns found: chosen_response, prompt, rejected); "
        "did you mean 'chosen_response'? Map it with `columns: {chosen: chosen_response}`"
    ) in str(info.value)


def test_empty_eval_split_is_written_loadable(tmp_path):
    from datasets import load_from_disk

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(3)])
    prepared = prepare(DataConfig(sources=[SourceConfig(path=str(data))], eval_split=0.05), seed=0)
    assert len(prepared.eval) == 0
    assert "eval split is empty: 3 rows x eval_split 0.05 left none for evaluation" in prepared.report["warnings"]
    data_dir = save(prepared, tmp_path / "run")
    evals = load_from_disk(str(data_dir / "eval"))
    assert len(evals) == 0 and set(evals.column_names) == set(load_from_disk(str(data_dir / "train")).column_names)


def test_validate_counts_dropped_ties_without_failing(tmp_path, tiny_model, capsys):

    from workbench.cli import main

    data = write_jsonl(tmp_path / "panda.jsonl", [annotated(v, i) for i, v in enumerate(VOTES)])
    source = {
        "path": str(data),
        "format": "labeled-pair",
        "prompt_template": "{instruction}\n\n{input}",
        "label": {"label": ["annotator1", "annotator2", "annotator3"], "tie_value": 0},
    }
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": str(tiny_model)},
        "data": {"sources": [source], "eval_split": 0.0, "max_length": 32},
        "output_dir": str(tmp_path / "run"),
    }
    write_yaml(tmp_path / "r.yaml", recipe)
    assert main(["validate", str(tmp_path / "r.yaml")]) == 0, capsys.readouterr().err
    assert "data: 6 rows read, 4 valid, 0 invalid, 2 annotator ties dropped (preference records)" in capsys.readouterr().out
    recipe["data"]["sources"][0]["label"]["on_tie"] = "error"
    write_yaml(tmp_path / "r.yaml", recipe)
    assert main(["validate", str(tmp_path / "r.yaml")]) == 2
    assert f"{data}:3: annotators tie (labels [1, 2, 0]) (1 more invalid rows in this source)." in capsys.readouterr().err


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        ([1, 1, 1], ("first", "unanimous")),
        ([2, 1, 2], ("second", "majority")),
        ([1, 2], ("tie", "annotators tie (labels [1, 2])")),  # no strict majority
        ([0, 0, 2], ("tie", "annotators tie (labels [0, 0, 2])")),  # a majority for the tie label
        ([1, None, 1], ("first", "unanimous")),  # a missing vote does not count
        ([None, ""], ("invalid", "no annotator label")),
        ([1, 7], ("invalid", "label 7 is none of 1, 2, 0 (tie)")),
    ],
)
def test_majority_label_by_hand(votes, expected):
    from workbench.data.sources import majority_label

    assert majority_label(votes, LabelSpec(label=["a", "b", "c"], tie_value=0)) == expected


def test_csv_text_booleans_match_boolean_label_values():
    from workbench.data.sources import _label_matches

    assert _label_matches("TRUE", True) and _label_matches(" false", False) and _label_matches(True, True)
    assert not _label_matches(True, 1) and not _label_matches(1, True) and not _label_matches("yes", True)


def test_a_system_prompt_opens_every_prompt_of_its_source(tmp_path, tokenizer):
    """`system_prompt` replaces a row's own system message, turns a plain-text prompt into the user turn after it,
    and reaches the token ids through the chat template (a real-model recipe asks for short answers this way)."""
    import json

    from workbench.data.formatting import tokenize_prompt
    from workbench.data.sources import load_source

    data = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "How do I boil an egg?"},
        {"prompt": [{"role": "system", "content": "old"}, {"role": "user", "content": "Name a color."}]},
        {
            "prompt": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
            ]
        },
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    src = SourceConfig(path=str(data), format="prompt", system_prompt="Answer briefly.")
    prompts = [item.row["prompt"] for item in load_source(src, 0, "prompt")]
    system = {"role": "system", "content": "Answer briefly."}
    assert prompts == [
        [system, {"role": "user", "content": "How do I boil an egg?"}],
        [system, {"role": "user", "content": "Name a color."}],
        [system, *rows[2]["prompt"]],
    ]
    ids = tokenize_prompt(tokenizer, prompts[0], 256).prompt_ids
    expected = tokenizer.apply_chat_template(prompts[0], tokenize=True, add_generation_prompt=True)
    assert ids == list(getattr(expected, "input_ids", expected)) and "Answer briefly." in tokenizer.decode(ids)
    unset = SourceConfig(path=str(data), format="prompt")
    assert [item.row["prompt"] for item in load_source(unset, 0, "prompt")][0] == "How do I boil an egg?"
