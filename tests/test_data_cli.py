"""`workbench data prepare` and `workbench data inspect` on real files; the hub-id code path offline."""

from __future__ import annotations

import json

import pytest
from conftest import HH_TEST, LLMBAR, need_shared, write_yaml

from workbench.cli import main
from workbench.config import SourceConfig
from workbench.data.sources import load_source
from workbench.errors import DataError


def test_data_prepare_writes_splits_rejects_and_report(tmp_path, tiny_model, capsys):
    need_shared()
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": str(tiny_model)},
        "data": {"sources": [{"path": str(HH_TEST), "format": "hh-rlhf"}], "on_invalid": "drop", "max_length": 256},
        "output_dir": str(tmp_path / "prep"),
    }
    path = tmp_path / "r.yaml"
    write_yaml(path, recipe)
    assert main(["data", "prepare", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rows read 2354, kept 2352, dropped 2, duplicates removed 0 (exact)" in out
    from datasets import load_from_disk

    run = tmp_path / "prep"
    report = json.loads((run / "data_report.json").read_text())
    assert len(load_from_disk(str(run / "data" / "train"))) == report["split"]["train"]
    assert len(load_from_disk(str(run / "data" / "eval"))) == report["split"]["eval"]
    assert [json.loads(line)["line"] for line in (run / "data" / "rejects.jsonl").read_text().splitlines()] == [722, 2169]
    trunc = report["truncation"]
    assert trunc["train"]["pairs"] + trunc["eval"]["pairs"] == 2352
    assert trunc["train"]["truncated"] > 0 and trunc["train"]["prompt_truncated"] > 0
    assert report["tokens"]["train"]["prompt"]["max"] > 256  # lengths are measured before truncation


def test_data_inspect_a_file_writes_report_and_length_plots(tmp_path, tiny_model, capsys):
    need_shared()
    out_dir = tmp_path / "inspect"
    path = LLMBAR / "Natural" / "dataset.json"
    assert main(["data", "inspect", str(path), "--tokenizer", str(tiny_model), "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "rows read 100, kept 100, dropped 0" in printed
    assert "length bias (train): chosen longer in" in printed
    report = json.loads((out_dir / "data_report.json").read_text())
    assert report["plots"] == ["lengths_train.png", "lengths_eval.png"]
    for name in report["plots"]:
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lb = report["length_bias"]["train"]
    assert lb["chosen_longer"] + lb["rejected_longer"] + lb["equal"] == report["split"]["train"]


def test_data_inspect_of_a_file_writes_nothing_unless_told_where(tmp_path, tiny_model, capsys, monkeypatch):
    """It wrote `inspect-NAME/` into the current directory unasked; now it prints, and writes only with --out."""
    data = tmp_path / "data" / "pairs.jsonl"
    data.parent.mkdir()
    data.write_text(
        "".join(json.dumps({"prompt": f"q{i}?", "chosen": "a longer answer", "rejected": "no"}) + "\n" for i in range(8))
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["data", "inspect", str(data), "--tokenizer", str(tiny_model)]) == 0
    printed = capsys.readouterr().out
    assert "rows read 8, kept 8, dropped 0" in printed
    assert printed.rstrip().splitlines()[-1] == "nothing written: pass --out DIR to keep the report and the length plots"
    assert list(work.iterdir()) == [] and sorted(p.name for p in data.parent.iterdir()) == ["pairs.jsonl"]


def test_hub_ids_go_through_load_dataset_and_fail_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        list(load_source(SourceConfig(path="someone/some-preference-data", split="train"), 0))
    assert str(info.value).startswith(
        "data source 'someone/some-preference-data': not a local file or directory, and loading it as a hub dataset failed"
    )


def test_the_report_warns_when_length_alone_explains_nine_pairs_in_ten():
    from workbench.data.report import length_rule_warning, summary_lines

    def bias(longer: int, shorter: int, pairs: int = 10) -> dict:
        return {"pairs": pairs, "chosen_longer": longer, "rejected_longer": shorter, "equal": pairs - longer - shorter}

    assert length_rule_warning(bias(9, 1)) == (
        "warning: one rule, 'the longer response is chosen', explains 9 of 10 train pairs (90%): a reward model can "
        "reach that accuracy by length alone; judge it against this rule, or balance the lengths"
    )
    assert length_rule_warning(bias(0, 19, pairs=20)).startswith(
        "warning: one rule, 'the shorter response is chosen', explains 19 of 20 train pairs (95%)"
    )
    assert length_rule_warning(bias(8, 1)) is None  # 80%: below the bar
    assert length_rule_warning(bias(0, 0, pairs=0)) is None

    report = {
        "rows_read": 10,
        "kept": 10,
        "dropped": {"total": 0, "by_reason": {}},
        "duplicates": {"removed": 0, "mode": "exact"},
        "warnings": {},
        "sources": [],
        "split": {"by": "pair", "train": 10, "eval": 0},
        "contamination": {"eval_pairs_in_train": 0, "eval_prompts_in_train": 0},
        "length_bias": {"train": {**bias(9, 1), "chosen_longer_share": 0.9}},
    }
    lines = summary_lines(report)
    assert lines[lines.index("length bias (train): chosen longer in 9 of 10 pairs (0.9)") + 1] == length_rule_warning(bias(9, 1))
