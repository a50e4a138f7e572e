"""On-policy preference pairs (method `pairs`, `workbench data pairs`) and `prompt_turns`, on CPU with the tiny model."""

from __future__ import annotations

import json

import pytest
from conftest import HH_TEST, adapted_recipe, kill_when, need_shared, read_yaml, run_ok, run_workbench, shipped_recipe, write_yaml
from test_train import read_metrics

from workbench.config import SourceConfig
from workbench.data.pipeline import read_jsonl
from workbench.data.sources import Loaded, first_user_turn, load_source
from workbench.errors import DataError


def test_prompt_turns_first_keeps_the_system_message_and_the_first_user_turn_of_hh_dialogues():
    need_shared()

    def prompts(src):
        return [item.row["prompt"] for item in load_source(src, 0, "prompt") if isinstance(item, Loaded)]

    whole = prompts(SourceConfig(path=str(HH_TEST), format="hh-rlhf"))
    first = prompts(SourceConfig(path=str(HH_TEST), format="hh-rlhf", prompt_turns="first", system_prompt="Be brief."))
    assert len(first) == len(whole) == 2352  # lines 722 and 2169 are rejected either way (chosen == rejected)
    system = {"role": "system", "content": "Be brief."}
    assert first == [[system, next(m for m in w if m["role"] == "user")] for w in whole]
    multi = [i for i, w in enumerate(whole) if len(w) > 1]
    assert len(multi) == 2352 - 700  # 700 single-turn rows (shared/data/README.md): their prompt is unchanged
    assert first[0][1]["content"] == "Do you know why turkeys became the official food of thanksgiving?"
    # a dialogue's own system message stays, its later turns go
    row = [{"role": "system", "content": "S"}, {"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}]
    assert first_user_turn([*row, {"role": "user", "content": "C"}]) == row[:2]
    assert first_user_turn("plain text") == "plain text"


def test_prompt_turns_first_is_refused_for_records_whose_responses_answer_the_last_turn():
    need_shared()
    src = SourceConfig(path=str(HH_TEST), format="hh-rlhf", prompt_turns="first")
    with pytest.raises(DataError, match=r"`data.sources.0.prompt_turns: first` keeps a dialogue's first user turn only"):
        next(load_source(src, 0, "preference"))


def pairs_recipe(tmp_path, model, name, **extra):
    data = {**shipped_recipe("pairs")["data"], "sources": [{"synthetic": {"num_pairs": 48, "seed": 2}}]}
    generation = {"num_samples": 4, "max_new_tokens": 12, "batch_size": 4}
    sections = {"data": data, "generation": generation, "train": {"min_margin": 0.05}, **extra}
    return adapted_recipe(tmp_path, "pairs", model, name, **sections)


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory, rs_model):
    tmp = tmp_path_factory.mktemp("pairs")
    res = run_ok(["data", "pairs", str(pairs_recipe(tmp, rs_model, "one"))])
    return tmp, tmp / "one", res.stdout


def expected_pairs(rows, min_margin):
    """Best and worst finished response of each prompt by hand, and the skipped prompts by reason."""
    by_prompt: dict[int, list] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_index"], []).append(r)
    pairs, skipped = [], {"no": 0, "one": 0, "margin": 0}
    for index in sorted(by_prompt):
        done = sorted((r for r in by_prompt[index] if r["finished"]), key=lambda r: r["sample"])
        if len(done) < 2:
            skipped["no" if not done else "one"] += 1
            continue
        best = max(done, key=lambda r: r["score"])  # first of equals, as max() keeps
        worst = min(done, key=lambda r: r["score"])
        if best["score"] - worst["score"] > min_margin:
            pairs.append(
                (best["prompt_id"], best["prompt"], best["completion"], worst["completion"], best["score"] - worst["score"])
            )
        else:
            skipped["margin"] += 1
    return pairs, skipped


@pytest.mark.slow
def test_pairs_are_each_prompts_best_and_worst_finished_response_with_skips_counted(pairs_run):
    _, run, stdout = pairs_run
    rows = read_jsonl(run / "samples" / "generations.jsonl")
    assert len(rows) == 4 * len({r["prompt_index"] for r in rows})
    expected, skipped = expected_pairs(rows, 0.05)
    pairs = read_jsonl(run / "pairs.jsonl")
    assert [(p["prompt_id"], p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [e[:4] for e in expected]
    assert [p["score_margin"] for p in pairs] == pytest.approx([e[4] for e in expected])
    assert [p["score_margin"] for p in pairs] == pytest.approx([p["chosen_score"] - p["rejected_score"] for p in pairs])
    assert min(p["score_margin"] for p in pairs) > 0.05
    assert all(skipped.values()), skipped  # the settings make every kind of skipped prompt
    report = json.loads((run / "data_report.json").read_text())["pairs"]
    assert (report["prompts"], report["pairs"]) == (len({r["prompt_index"] for r in rows}), len(pairs))
    assert (report["skipped_no_finished"], report["skipped_one_finished"], report["skipped_small_margin"]) == (
        skipped["no"],
        skipped["one"],
        skipped["margin"],
    )
    assert report["unfinished"] == sum(not r["finished"] for r in rows) and report["min_margin"] == 0.05
    assert json.loads((run / "manifest.json").read_text())["pairs"] == report
    metrics = read_metrics(run)[0]
    assert metrics["pairs/pairs"] == len(pairs) and metrics["pairs/skipped_one_finished"] == skipped["one"]
    assert f"pairs: {len(pairs)} of {report['prompts']} prompts" in stdout
    assert not (run / "model").exists()


@pytest.mark.slow
def test_the_pairs_file_is_a_dpo_recipes_data_unchanged(pairs_run):
    from workbench.config import load_recipe
    from workbench.data.pipeline import prepare

    tmp, run, _ = pairs_run
    recipe = shipped_recipe("quickstart_dpo")
    recipe["data"]["sources"] = [{"path": str(run / "pairs.jsonl")}]
    write_yaml(tmp / "dpo.yaml", recipe)
    prepared = prepare(load_recipe(tmp / "dpo.yaml").data, seed=0)
    assert prepared.report["rows_read"] == len(read_jsonl(run / "pairs.jsonl")) and prepared.report["dropped"]["total"] == 0


@pytest.mark.slow
def test_killed_mid_generation_a_rerun_writes_the_same_pairs(pairs_run, rs_model):
    tmp, single, _ = pairs_run
    path = pairs_recipe(tmp, rs_model, "killed")
    run = tmp / "killed"
    part = run / "samples" / "generations.part0-of1.jsonl"
    kill_when(["data", "pairs", str(path)], lambda: part.is_file() and len(part.read_text().splitlines()) >= 40)
    assert not (run / "samples" / "generations.done").exists() and not (run / "pairs.jsonl").exists()
    run_ok(["data", "pairs", str(path), "--resume"])  # resumes its samples: there is never a checkpoint
    assert (run / "pairs.jsonl").read_text() == (single / "pairs.jsonl").read_text()
    # the rerun generated only the batches the killed run had not finished
    assert 0 < read_metrics(run)[-1]["pairs/generated_tokens"] < read_metrics(single)[0]["pairs/generated_tokens"]


def test_validate_reports_what_the_pairs_step_refuses(tmp_path, tiny_model):
    path = pairs_recipe(tmp_path, tiny_model, "bad", train={"min_margin": -0.1})
    with open(path) as fh:
        text = fh.read()
    path.write_text(text.replace("num_samples: 4", "num_samples: 1"))
    sentences = [
        "`generation.num_samples: 1`: a pair compares two responses of one prompt; set it to 2 or more",
        "`train.min_margin: -0.1` must not be negative",
    ]
    for args in (["validate", str(path)], ["data", "pairs", str(path)], ["train", str(path)]):
        res = run_workbench(args)
        assert res.returncode == 2 and all(s in res.stderr for s in sentences), res.stderr[-2000:]
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "bad").exists()


def test_data_pairs_refuses_another_method(tmp_path):
    recipe = shipped_recipe("quickstart_dpo")
    write_yaml(tmp_path / "dpo.yaml", recipe)
    res = run_workbench(["data", "pairs", str(tmp_path / "dpo.yaml")])
    assert res.returncode == 2 and "`workbench data pairs` runs `method: pairs` recipes" in res.stderr, res.stderr[-2000:]


# ----------------------------------------------------------------------------------------------
# In a comparison: `data_from`


def iterative_comparison(tmp_path, model, stages=("pairs", "dpo", "pairs2", "dpo2")):
    """An iterative DPO round: pairs from the model -> DPO on them -> pairs from that DPO policy -> DPO again."""
    pairs = {
        "method": "pairs",
        "reward_model": {"function": "workbench.data.synthetic:vowel_reward"},
        "generation": {"num_samples": 4, "max_new_tokens": 12, "batch_size": 8},
        "train": {"min_margin": 0.0},
    }
    dpo = {"method": "dpo", "train": {"learning_rate": 1e-3, "per_device_train_batch_size": 8, "max_steps": 2, "save_steps": 100}}
    comparison = {
        "name": "iterative",
        "output_dir": str(tmp_path / "out"),
        "base": {
            "model": {"name_or_path": str(model), "dtype": "float32"},
            "data": {
                "sources": [{"synthetic": {"num_pairs": 64, "seed": 3}}],
                "eval_split": 0.25,
                "split_by": "prompt",
                "max_length": 48,
            },
            "tracking": {"mode": "disabled"},
        },
        "eval": {
            "num_prompts": 8,
            "num_pairs": 8,
            "samples_per_prompt": 1,
            "generation": {"max_new_tokens": 8},
            "gold_reward": {"function": "workbench.data.synthetic:vowel_reward"},
        },
        "stages": {
            "pairs": pairs,
            "dpo": {**dpo, "data_from": "pairs"},
            "pairs2": {**pairs, "model_from": "dpo"},
            "dpo2": {**dpo, "model_from": "dpo", "data_from": "pairs2"},
        },
    }
    comparison["stages"] = {k: v for k, v in comparison["stages"].items() if k in stages}
    return write_yaml(tmp_path / "iterative.yaml", comparison, sort_keys=False)


@pytest.mark.slow
def test_an_iterative_dpo_round_trains_on_the_pairs_stages_and_is_evaluated_on_the_base_data(tmp_path, rs_model):
    from workbench.config import load_recipe
    from workbench.data.pipeline import prepare

    path = iterative_comparison(tmp_path, rs_model)
    first = run_ok(["compare", str(path)], timeout=900)
    seed = tmp_path / "out" / "seed-42"
    for stage, source, model in (("dpo", "pairs", rs_model), ("dpo2", "pairs2", seed / "dpo" / "model")):
        recipe = read_yaml(seed / stage / "stage_recipe.yaml")
        assert recipe["data"]["sources"] == [{"path": str(seed / source / "pairs.jsonl")}]
        assert recipe["data"]["eval_split"] == 0.25 and recipe["data"]["max_length"] == 48  # the base's settings
        assert read_yaml(seed / source / "stage_recipe.yaml")["model"]["name_or_path"] == str(model)
        made = read_jsonl(seed / source / "pairs.jsonl")
        report = json.loads((seed / stage / "data_report.json").read_text())
        assert made and report["rows_read"] == len(made) and report["dropped"]["total"] == 0
        assert not (seed / source / "model").exists()
    assert read_jsonl(seed / "pairs2" / "pairs.jsonl") != read_jsonl(seed / "pairs" / "pairs.jsonl")  # the DPO policy's own
    # the evaluation holds out the base data's prompts (never sampled for pairs), not an eval split of the pairs
    sampled = load_recipe(seed / "pairs" / "stage_recipe.yaml")  # the base data, as the first pairs stage read it
    base = prepare(sampled.data, sampled.data_seed)
    assert {json.dumps(r["prompt"]) for r in base.eval}.isdisjoint({json.dumps(r["prompt"]) for r in base.train})
    held_out = [r["prompt"] for r in base.eval]
    for stage in ("dpo", "dpo2"):
        evaluated = {json.dumps(r["prompt"]) for r in read_jsonl(seed / stage / "eval_samples.jsonl")}
        assert len(evaluated) == 8 and evaluated <= {json.dumps(p) for p in held_out}
        assert json.loads((seed / stage / "eval.json").read_text())["metrics"]["num_pairs"] == 8 <= len(base.eval)
    assert "evaluating 2 policies on 8 held-out prompts x 1 samples and 8 held-out pairs" in first.stdout
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| pairs | pairs | completed |" in report and "| pairs2 | pairs | completed |" in report  # the stage costs
    again = run_ok(["compare", str(path)], timeout=900)
    for stage, method in (("pairs", "pairs"), ("dpo", "dpo"), ("pairs2", "pairs"), ("dpo2", "dpo")):
        assert f"{stage} ({method}): cached" in again.stdout, again.stdout


def test_data_from_a_stage_that_writes_no_data_is_a_recipe_error(tmp_path, tiny_model):
    path = iterative_comparison(tmp_path, tiny_model)
    res = run_workbench(["compare", str(path), "--set", "stages.dpo2.data_from=dpo", "--set", "stages.dpo2.model_from=pairs2"])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        "`stages.dpo2.data_from: dpo`: stage `dpo` is a `method: dpo` stage, which writes no data; name a stage whose "
        "method writes data (pairs)" in res.stderr
    ), res.stderr[-2000:]
    assert (
        "`stages.dpo2.model_from: pairs2`: stage `pairs2` (`method: pairs`) writes pairs.jsonl, not a model; read it with "
        "`data_from: pairs2`, or name a stage that trains one" in res.stderr
    ), res.stderr[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_pairs_stage_killed_in_a_comparison_continues_its_samples(tmp_path, rs_model):
    """`compare` cleared a stage killed before its first checkpoint, so a pairs stage (which never has one) started
    its generation over; now the same stage keeps samples/ and generates only what was missing."""
    import os
    import time

    path = iterative_comparison(tmp_path, rs_model, stages=("pairs", "dpo"))
    stage = tmp_path / "out" / "seed-42" / "pairs"
    part = stage / "samples" / "generations.part0-of1.jsonl"
    kill_when(["compare", str(path)], lambda: part.is_file() and len(part.read_text().splitlines()) >= 40)
    lock = stage / ".lock"
    pid = json.loads(lock.read_text())["pid"] if lock.is_file() else None
    deadline = time.time() + 120
    while pid and time.time() < deadline:  # the stage stops once its owner is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    kept = len(read_jsonl(part))
    assert kept >= 32 and not (stage / "samples" / "generations.done").exists()
    res = run_ok(["compare", str(path)], timeout=900)
    assert "pairs (pairs): training" in res.stdout
    rows = read_jsonl(stage / "samples" / "generations.jsonl")
    sampled = read_metrics(stage)[0]["pairs/generated_tokens"]
    assert 0 < sampled < sum(r["num_tokens"] + r["finished"] for r in rows)  # only the missing batches were generated again
    assert len(rows) == 4 * len({r["prompt_index"] for r in rows}) and (stage / "pairs.jsonl").is_file()


def test_validate_takes_the_file_a_data_from_stage_will_write(tmp_path, tiny_model):
    """The pairs file does not exist before its stage runs: validate said `not found` for every stage reading it."""
    res = run_workbench(["validate", str(iterative_comparison(tmp_path, tiny_model))])
    assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-2000:]
    assert "stage dpo (dpo): OK" in res.stdout and "stage dpo2 (dpo): OK" in res.stdout
