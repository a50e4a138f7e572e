"""Loaders and layouts, on hand-made files and on the real hh-rlhf and LLMBar data."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import HH_TEST, LLMBAR, need_shared

from workbench.config import DataConfig, LabelSpec, SourceConfig, SyntheticSpec
from workbench.data.pipeline import prepare
from workbench.data.sources import (
    ASSISTANT,
    HUMAN,
    Loaded,
    load_source,
    merge_consecutive_roles,
    parse_hh_dialogue,
    split_hh_pair,
)
from workbench.errors import DataError

ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Name a color.", "chosen": "Blue.", "rejected": "Seven."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
]


def loaded(src: SourceConfig) -> list[Loaded]:
    return [x for x in load_source(src, 0) if isinstance(x, Loaded)]


def write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "json", "json.gz", "parquet", "csv", "csv.gz", "saved"])
def test_every_file_kind_gives_the_same_rows(tmp_path, kind):
    from datasets import Dataset

    path = tmp_path / f"data.{kind}"
    if kind.startswith("jsonl"):
        write_jsonl(path, ROWS, gz=kind.endswith(".gz"))
    elif kind.startswith("json"):
        text = json.dumps(ROWS)
        path.write_bytes(gzip.compress(text.encode()) if kind.endswith(".gz") else text.encode())
    elif kind == "parquet":
        Dataset.from_list(ROWS).to_parquet(str(path))
    elif kind.startswith("csv"):
        Dataset.from_list(ROWS).to_csv(str(tmp_path / "plain.csv"), index=False)
        raw = (tmp_path / "plain.csv").read_bytes()
        path.write_bytes(gzip.compress(raw) if kind.endswith(".gz") else raw)
    else:
        Dataset.from_list(ROWS).save_to_disk(str(path))
    rows = [x.row for x in loaded(SourceConfig(path=str(path)))]
    assert rows == ROWS


def test_column_renames(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in ROWS])
    src = SourceConfig(path=str(path), columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert [x.row for x in loaded(src)] == ROWS


def test_implicit_conversational_prompt_is_the_shared_prefix(tmp_path):
    user = {"role": "user", "content": "Hi"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "Hello!"}],
        "rejected": [user, {"role": "assistant", "content": "Go away."}],
    }
    (item,) = loaded(SourceConfig(path=str(write_jsonl(tmp_path / "c.jsonl", [row]))))
    assert item.row == {
        "prompt": [user],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }


def test_hh_split_keeps_markers_inside_responses():
    chosen = "\n\nHuman: hi\n\nAssistant: ok\n\nHuman: tell me\n\nAssistant: Sure.\n\nHuman: inside"
    rejected = "\n\nHuman: hi\n\nAssistant: ok\n\nHuman: tell me\n\nAssistant: Sorry."
    shared, c_tail, r_tail = split_hh_pair(chosen, rejected)
    assert shared == "\n\nHuman: hi\n\nAssistant: ok\n\nHuman: tell me\n\nAssistant:"
    assert (c_tail, r_tail) == (" Sure.\n\nHuman: inside", " Sorry.")
    assert parse_hh_dialogue(shared[: -len(ASSISTANT)]) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "tell me"},
    ]


def test_hh_split_when_responses_share_their_first_characters():
    """A character-level common prefix would cut into ' About'/' Are'; the split must not."""
    shared, c_tail, r_tail = split_hh_pair("\n\nHuman: q\n\nAssistant: About it", "\n\nHuman: q\n\nAssistant: Are you")
    assert shared.endswith(ASSISTANT) and (c_tail, r_tail) == (" About it", " Are you")


def hh_rows():
    with gzip.open(HH_TEST, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_hh_rlhf_split_is_exact_on_every_real_row():
    need_shared()
    rows = hh_rows()
    assert len(rows) == 2354
    markers_in_response, repeated_roles = [], []
    for number, row in enumerate(rows, start=1):
        parts = split_hh_pair(row["chosen"], row["rejected"])
        assert parts is not None, number
        shared, c_tail, r_tail = parts
        assert shared + c_tail == row["chosen"] and shared + r_tail == row["rejected"], number
        assert shared.endswith(ASSISTANT)
        turns = parse_hh_dialogue(shared[: -len(ASSISTANT)])
        assert turns[0]["role"] == "user" and turns[-1]["role"] == "user", number
        assert len(turns) == shared.count(HUMAN) + shared.count(ASSISTANT) - 1
        if any(a["role"] == b["role"] for a, b in zip(turns, turns[1:])):
            repeated_roles.append(number)
        merged = merge_consecutive_roles(turns)
        assert all(a["role"] != b["role"] for a, b in zip(merged, merged[1:])), number
        if any(m in t for t in (c_tail, r_tail) for m in (HUMAN, ASSISTANT)):
            markers_in_response.append(number)
    assert markers_in_response == [169, 355, 568, 744, 961, 1012, 1167, 1308, 1451]
    assert repeated_roles == [356, 992, 1133, 1308, 1356, 1684, 1848]  # turns merged by the hh-rlhf layout


def test_hh_rlhf_through_the_data_layer_with_exact_counts(tmp_path):
    need_shared()
    data = DataConfig(sources=[SourceConfig(path=str(HH_TEST), format="hh-rlhf")], on_invalid="drop", eval_split=0.05)
    prepared = prepare(data, seed=0)
    report = prepared.report
    assert report["rows_read"] == 2354
    assert [(r.line, r.reason) for r in prepared.rejects] == [
        (722, "chosen identical to rejected"),
        (2169, "chosen identical to rejected"),
    ]
    assert report["warnings"] == {"empty rejected response": 4}
    assert report["duplicates"]["removed"] == 0
    assert report["split"]["train"] + report["split"]["eval"] == 2352
    by_line = {r["line"]: r for r in prepared.train + prepared.eval}
    assert [line for line in (121, 741, 1215, 2064) if by_line[line]["rejected"][0]["content"] == ""] == [121, 741, 1215, 2064]
    edge = by_line[169]
    assert edge["prompt"][-1]["role"] == "user" and HUMAN not in edge["prompt"][-1]["content"]
    single_turn = sum(len(r["prompt"]) == 1 for r in prepared.train + prepared.eval)
    assert single_turn == 700 - 0  # no single-turn row was among the two rejects
    assert HUMAN.strip() not in by_line[1]["chosen"][0]["content"]


def test_hh_rlhf_error_mode_names_the_first_bad_line():
    need_shared()
    data = DataConfig(sources=[SourceConfig(path=str(HH_TEST), format="hh-rlhf")], on_invalid="error")
    with pytest.raises(DataError) as info:
        prepare(data, seed=0)
    assert str(info.value).startswith(f"{HH_TEST}:722: chosen identical to rejected (1 more invalid row follow)")


LLMBAR_COUNTS = {
    "Natural": 100,
    "Adversarial/Neighbor": 134,
    "Adversarial/GPTInst": 92,
    "Adversarial/GPTOut": 47,
    "Adversarial/Manual": 46,
}


@pytest.mark.parametrize("subset", sorted(LLMBAR_COUNTS))
def test_llmbar_labeled_pairs(subset):
    need_shared()
    path = LLMBAR / subset / "dataset.json"
    raw = json.loads(path.read_text())
    items = loaded(SourceConfig(path=str(path), format="labeled-pair", label=LabelSpec()))
    assert len(items) == LLMBAR_COUNTS[subset]
    for item, row in zip(items, raw):
        better, worse = ("output_1", "output_2") if row["label"] == 1 else ("output_2", "output_1")
        assert item.row == {"prompt": row["input"], "chosen": row[better], "rejected": row[worse]}


def test_labeled_pair_is_detected_and_bad_labels_rejected(tmp_path):
    rows = [
        {"input": "q", "output_1": "a", "output_2": "b", "label": 2},
        {"input": "q2", "output_1": "a", "output_2": "b", "label": 3},
    ]
    path = tmp_path / "l.json"
    path.write_text(json.dumps(rows))
    out = list(load_source(SourceConfig(path=str(path)), 0))
    assert out[0].row == {"prompt": "q", "chosen": "b", "rejected": "a"}
    assert (out[1].line, out[1].reason) == (2, "label 3 is neither 1 nor 2")


def test_labeled_pair_custom_spec(tmp_path):
    rows = [{"q": "x", "A": "first", "B": "second", "winner": "B"}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    spec = LabelSpec(prompt="q", first="A", second="B", label="winner", first_value="A", second_value="B")
    (item,) = loaded(SourceConfig(path=str(path), format="labeled-pair", label=spec))
    assert item.row == {"prompt": "x", "chosen": "second", "rejected": "first"}


def test_synthetic_task_is_deterministic_and_follows_its_rule():
    from workbench.data.synthetic import vowel_share

    src = SourceConfig(synthetic=SyntheticSpec(num_pairs=50, seed=3))
    a, b = [x.row for x in loaded(src)], [x.row for x in loaded(src)]
    assert a == b and len(a) == 50
    assert all(vowel_share(r["chosen"]) >= vowel_share(r["rejected"]) + 0.05 for r in a)


def test_missing_file_and_unknown_layout_are_clear(tmp_path):
    with pytest.raises(DataError, match="data source 'nope.jsonl' not found"):
        list(load_source(SourceConfig(path="nope.jsonl"), 0))
    path = write_jsonl(tmp_path / "odd.jsonl", [{"a": 1}])
    with pytest.raises(DataError, match="cannot tell the data layout from columns"):
        list(load_source(SourceConfig(path=str(path)), 0))


@pytest.mark.parametrize(
    "text,local",
    [
        ("Anthropic/hh-rlhf", False),  # owner/name: a hub id
        ("imdb", False),
        ("../shared/data/hh-rlhf/helpful-base/test.jsonl.gz", True),
        ("~/pairs", True),
        ("pairs.csv.gz", True),
        ("corpora/hh/train", True),  # a hub id has at most one '/'
        ("mine/pairs", True),  # its first part is a directory here: a missing saved dataset, not a hub id
    ],
)
def test_what_looks_like_a_local_path(tmp_path, monkeypatch, text, local):
    from workbench.data.sources import looks_like_local_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert looks_like_local_path(text) is local


def test_a_hub_source_passes_its_config_folder_and_split_to_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_list(
            [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"}]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = SourceConfig(path="Anthropic/hh-rlhf", data_dir="helpful-base", split="test", format="hh-rlhf")
    rows = loaded(src)
    assert calls == [("Anthropic/hh-rlhf", None, {"data_dir": "helpful-base", "split": "test"})]
    assert len(rows) == 1 and rows[0].row["chosen"] == [{"role": "assistant", "content": "hello"}]


def test_a_repository_folder_read_with_data_dir_gives_the_files_rows(tmp_path, monkeypatch):
    """The shipped recipes name `Anthropic/hh-rlhf` with `data_dir: helpful-base`: `datasets` resolves that folder of
    a repository laid out like the hub's (a local copy here, no network) to exactly the rows of its test file."""
    import shutil

    import datasets

    need_shared()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "hh-rlhf" / "helpful-base").mkdir(parents=True)
    shutil.copy(HH_TEST, tmp_path / "hh-rlhf" / "helpful-base" / "test.jsonl.gz")
    from workbench.data.sources import read_hub

    hub = list(read_hub(SourceConfig(path=str(tmp_path / "hh-rlhf"), data_dir="helpful-base", split="test")))
    with gzip.open(HH_TEST, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    assert len(hub) == len(rows) == 2354
    assert [r.row for r in hub] == rows and hub[0].source == f"{tmp_path / 'hh-rlhf'}/helpful-base[test]"
