"""Validation modes with line numbers, dedup, split stability, mixture, contamination, truncation."""

from __future__ import annotations

import json
import random

import pytest

from workbench.config import DataConfig, SourceConfig
from workbench.data import quality
from workbench.data.formatting import TokenizationSettings, tokenize_pair, truncate_pair, truncation_report
from workbench.data.pipeline import prepare, save
from workbench.data.schema import pair_id
from workbench.errors import DataError

GOOD = {"prompt": "p", "chosen": "yes", "rejected": "no"}
LINES = [
    json.dumps(GOOD),
    "{not json",
    "",
    json.dumps([1, 2]),
    json.dumps({"prompt": "p2", "chosen": None, "rejected": "x"}),
    json.dumps({"prompt": "  ", "chosen": "a", "rejected": "b"}),
    json.dumps({"prompt": "p3", "chosen": "same", "rejected": "same "}),
    json.dumps({"prompt": "p4", "chosen": 5, "rejected": "b"}),
    json.dumps({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}),
    json.dumps({"prompt": "p5", "chosen": "", "rejected": "b"}),
    json.dumps({"prompt": "p6", "rejected": "b"}),
]


def bad_file(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


def test_drop_mode_keeps_good_rows_and_records_every_bad_one(tmp_path):
    path = bad_file(tmp_path)
    prepared = prepare(DataConfig(sources=[SourceConfig(path=str(path))], on_invalid="drop", eval_split=0.0), seed=0)
    assert [(r.line, r.reason) for r in prepared.rejects] == [
        (2, "not valid JSON (Expecting property name enclosed in double quotes)"),
        (4, "not a JSON object (got list)"),
        (5, "field 'chosen' is null"),
        (6, "empty prompt"),
        (7, "chosen identical to rejected"),
        (8, "field 'chosen' is not a string or message list (got int)"),
        (9, "field 'prompt' message 0 lacks 'content'"),
        (11, "missing field 'chosen' (columns found: prompt, rejected)"),
    ]
    assert [r["line"] for r in prepared.train] == [1, 10]  # line 3 is blank: not a row
    assert prepared.report["rows_read"] == 10
    assert prepared.report["dropped"]["total"] == 8
    assert prepared.report["warnings"] == {"empty chosen response": 1}
    run = tmp_path / "run"
    save(prepared, run)
    rejects = [json.loads(line) for line in (run / "data" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["source"], r["line"]) for r in rejects] == [(str(path), n) for n in (2, 4, 5, 6, 7, 8, 9, 11)]
    assert json.loads((run / "data_report.json").read_text())["kept"] == 2


def test_error_mode_stops_at_first_bad_row_and_counts_the_rest(tmp_path):
    path = bad_file(tmp_path)
    with pytest.raises(DataError) as info:
        prepare(DataConfig(sources=[SourceConfig(path=str(path))]), seed=0)
    message = str(info.value)
    assert message.startswith(  # the parser's whole message: file, line and column
        f"{path}:2:2: not valid JSON (Expecting property name enclosed in double quotes) (7 more invalid rows follow)."
    )
    assert "on_invalid: drop" in message


def test_a_json_parse_error_names_file_line_and_column(tmp_path):
    """JSON Lines: the line of the file and the column in it; a whole .json file: its line and column. The rejects
    keep the column; the report groups rows by the parser's words, not by where they broke."""
    lines = ['{"prompt": "p", "chosen": "a", "rejected": "b"}', '{"prompt": "p2", "chosen": "a" "rejected": "b"}']
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        prepare(DataConfig(sources=[SourceConfig(path=str(jsonl))]), seed=0)
    assert str(info.value).startswith(f"{jsonl}:2:32: not valid JSON (Expecting ',' delimiter).")
    prepared = prepare(DataConfig(sources=[SourceConfig(path=str(jsonl))], on_invalid="drop", eval_split=0.0), seed=0)
    assert prepared.rejects[0].to_json()["column"] == 32
    assert prepared.report["dropped"]["by_reason"] == {"not valid JSON (Expecting ',' delimiter)": 1}

    whole = tmp_path / "pairs.json"
    whole.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    with pytest.raises(DataError) as info:
        prepare(DataConfig(sources=[SourceConfig(path=str(whole))]), seed=0)
    assert str(info.value).startswith(f"{whole}:3:32: not valid JSON (Expecting ',' delimiter)")


def rows(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = {"prompt": f"question {i} about {rng.random()}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
        out.append({**r, "pair_id": pair_id(r)})
    return out


def test_exact_dedup_ignores_whitespace_differences():
    a = {"prompt": "Hi  there", "chosen": "x", "rejected": "y"}
    b = {"prompt": "Hi there ", "chosen": "x\n", "rejected": "y"}
    data = [{**r, "pair_id": pair_id(r)} for r in (a, b, {**a, "chosen": "z"})]
    assert quality.exact_duplicates(data) == {1: 0}


def test_near_dedup_finds_small_edits_only():
    base = "the quick brown fox jumps over the lazy dog near the river bank on a sunny morning in early spring"
    items = [
        {"prompt": base, "chosen": "a fine long answer about foxes and dogs", "rejected": "nope"},
        {"prompt": base + " today", "chosen": "a fine long answer about foxes and dogs", "rejected": "nope"},
        {
            "prompt": "a completely different question about cooking pasta at home with fresh tomatoes",
            "chosen": "boil water",
            "rejected": "no",
        },
    ]
    assert quality.near_duplicates(items, threshold=0.8) == {1: 0}


def test_split_is_stable_under_reordering_and_mixing():
    data = rows(400)
    split_a = {r["pair_id"] for r in data if quality.is_eval(r, 0.1, "pair")}
    shuffled = list(reversed(data)) + rows(50, seed=9)
    split_b = {r["pair_id"] for r in shuffled if quality.is_eval(r, 0.1, "pair")}
    assert split_a and split_a <= split_b
    assert 20 <= len(split_a) <= 60  # ~10% of 400


def test_split_by_prompt_keeps_a_prompts_pairs_together():
    data = [{**r, "prompt": f"shared {i % 20}"} for i, r in enumerate(rows(200))]
    by_prompt: dict[str, set[bool]] = {}
    for r in data:
        by_prompt.setdefault(r["prompt"], set()).add(quality.is_eval(r, 0.3, "prompt"))
    assert all(len(v) == 1 for v in by_prompt.values())
    train = [r for r in data if not quality.is_eval(r, 0.3, "prompt")]
    evals = [r for r in data if quality.is_eval(r, 0.3, "prompt")]
    assert quality.contamination(train, evals)["eval_prompts_in_train"] == 0
    pair_split_eval = [r for r in data if quality.is_eval(r, 0.3, "pair")]
    pair_split_train = [r for r in data if not quality.is_eval(r, 0.3, "pair")]
    assert quality.contamination(pair_split_train, pair_split_eval)["eval_prompts_in_train"] > 0


def test_mixture_indices():
    rng = random.Random(0)
    assert quality.mixture_indices(4, 1.0, rng) == [0, 1, 2, 3]
    assert quality.mixture_indices(4, 2.0, rng) == [0, 1, 2, 3, 0, 1, 2, 3]
    half = quality.mixture_indices(10, 0.5, random.Random(0))
    assert len(half) == 5 and len(set(half)) == 5
    assert quality.mixture_indices(10, 0.5, random.Random(0)) == half
    assert len(quality.mixture_indices(10, 1.5, random.Random(0))) == 15


def test_weighted_mixture_of_two_sources(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"prompt": f"{name}{i}", "chosen": "c", "rejected": "r"}) + "\n" for i in range(40))
        )
    data = DataConfig(
        sources=[
            SourceConfig(path=str(tmp_path / "a.jsonl"), weight=0.5),
            SourceConfig(path=str(tmp_path / "b.jsonl"), weight=2.0),
        ],
        eval_split=0.0,
    )
    prepared = prepare(data, seed=1)
    counts = [s["train_after_mixture"] for s in prepared.report["sources"]]
    assert counts == [20, 80]
    assert prepare(data, seed=1).train == prepared.train  # seeded


def test_duplicates_are_recorded_not_lost(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(GOOD) + "\n" for _ in range(3)) + json.dumps({**GOOD, "prompt": "other"}) + "\n")
    prepared = prepare(DataConfig(sources=[SourceConfig(path=str(path))], eval_split=0.0), seed=0)
    assert len(prepared.train) == 2
    assert [(d["line"], d["duplicate_of"]["line"], d["kind"]) for d in prepared.duplicates] == [(2, 1, "exact"), (3, 1, "exact")]
    none = prepare(DataConfig(sources=[SourceConfig(path=str(path))], eval_split=0.0, dedup="none"), seed=0)
    assert len(none.train) == 4


def test_truncation_keeps_the_end_of_the_prompt():
    s = TokenizationSettings(max_length=10, max_prompt_length=4)
    prompt, chosen, rejected, p_cut, r_cut = truncate_pair(list(range(8)), [100, 101, 102], [200], s)
    assert prompt == [4, 5, 6, 7] and p_cut and not r_cut
    assert (chosen, rejected) == ([100, 101, 102], [200])
    prompt, chosen, rejected, p_cut, r_cut = truncate_pair(list(range(8)), list(range(100, 110)), [200], s)
    assert prompt == [4, 5, 6, 7] and chosen == list(range(100, 106)) and r_cut
    assert truncate_pair([1, 2], [3], [4], s) == ([1, 2], [3], [4], False, False)


def test_truncation_report_counts_pairs_that_lost_their_difference(tokenizer):
    s = TokenizationSettings(max_length=24, max_prompt_length=12)
    same_start = "banana " * 30
    useless = {"prompt": "Say something.", "chosen": same_start + "aurora", "rejected": same_start + "rhythm"}
    fine = {"prompt": "Say something.", "chosen": "aurora", "rejected": "rhythm"}
    long_prompt = {"prompt": "word " * 50 + "END", "chosen": "aurora", "rejected": "rhythm"}
    pairs = [tokenize_pair(tokenizer, r, s) for r in (useless, fine, long_prompt)]
    assert truncation_report(pairs) == {
        "pairs": 3,
        "truncated": 2,
        "prompt_truncated": 1,
        "response_truncated": 1,
        "lost_difference": 1,
    }
    assert tokenizer.decode(pairs[2].prompt_ids).endswith("END")
    assert all(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= 24 for p in pairs)


DIALOGUE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "first question " * 6},
    {"role": "assistant", "content": "first answer " * 6},
    {"role": "user", "content": "second question"},
    {"role": "assistant", "content": "second answer"},
    {"role": "user", "content": "third question"},
]


def test_a_long_chat_prompt_loses_its_oldest_turns_whole(tokenizer):
    """A chat prompt over max_prompt_length drops whole turns from the start (the system message stays, what is
    left starts with a user turn); before, its last tokens were kept, starting mid-message without a role token."""
    from workbench.data.formatting import prompt_ids, tokenize_prompt, tokenize_sft

    full = prompt_ids(tokenizer, DIALOGUE)
    kept = [DIALOGUE[0], *DIALOGUE[3:]]  # system + the second exchange + the third question
    kept_ids = prompt_ids(tokenizer, kept)
    budget = len(kept_ids) + 2  # room for that, not for the first exchange
    assert len(prompt_ids(tokenizer, [DIALOGUE[0], *DIALOGUE[1:]])) > budget
    row = {"prompt": DIALOGUE, "chosen": "yes", "rejected": "no"}
    pair = tokenize_pair(tokenizer, row, TokenizationSettings(max_length=budget + 8, max_prompt_length=budget))
    assert pair.prompt_ids == kept_ids and pair.prompt_truncated and not pair.response_truncated
    assert tokenizer.decode(pair.prompt_ids).startswith("<|system|>\nBe brief.<|end|>\n<|user|>\nsecond question")
    assert pair.lengths[0] == len(full)  # the report counts tokens before truncation
    assert pair.chosen_ids == tokenize_pair(tokenizer, {**row, "prompt": kept}, TokenizationSettings(999, 999)).chosen_ids
    sft = tokenize_sft(tokenizer, {"prompt": DIALOGUE, "completion": "yes"}, TokenizationSettings(budget + 8, budget))
    assert sft.prompt_ids == kept_ids and sft.prompt_truncated
    gen = tokenize_prompt(tokenizer, DIALOGUE, budget)
    assert gen.prompt_ids == kept_ids and gen.prompt_truncated and gen.lengths == (len(full),)
    # the whole prompt fits the sequence: nothing is cut
    assert tokenize_pair(tokenizer, row, TokenizationSettings(len(full) + 8, budget)).prompt_ids == full


def test_a_last_turn_too_long_on_its_own_is_cut_to_its_last_tokens(tokenizer):
    from workbench.data.formatting import prompt_ids, tokenize_prompt

    long_last = [*DIALOGUE[:-1], {"role": "user", "content": "third question " * 20}]
    full = prompt_ids(tokenizer, long_last)
    gen = tokenize_prompt(tokenizer, long_last, 12)
    assert gen.prompt_ids == full[-12:] and gen.prompt_truncated  # no leading special token in this template
    text = tokenize_prompt(tokenizer, "word " * 40, 12)  # a text prompt: its last tokens
    assert text.prompt_ids == prompt_ids(tokenizer, "word " * 40)[-12:]


def test_conversational_tokenization_masks_only_the_response(tokenizer):
    row = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "aurora"}],
        "rejected": [{"role": "assistant", "content": "lynx"}],
    }
    pair = tokenize_pair(tokenizer, row, TokenizationSettings(64, 32))
    assert tokenizer.decode(pair.prompt_ids) == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert tokenizer.decode(pair.chosen_ids) == "aurora<|end|>\n"
    full = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True, return_dict=False)
    assert pair.prompt_ids + pair.chosen_ids == list(full)
