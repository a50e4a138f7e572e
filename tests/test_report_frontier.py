"""The report's reward-KL frontier from a comparison directory built by hand: two swept families compared at
matched KL (hand-computed differences), the frontier in frontier.json and the PNG, Holm-corrected verdicts."""

from __future__ import annotations

import json

import pytest
from test_report import SFT_GOLD, write_stage

from workbench.comparison.types import Comparison, Outcome, Stage
from workbench.config import EvalConfig, GenerationConfig
from workbench.report import aggregate, write_outputs

# family -> (point, constant KL, gold shift over sft for every response)
POINTS = {
    "dpo": [("dpo@beta=0.3", 1.0, 0.10), ("dpo@beta=0.1", 3.0, 0.30)],
    "ppo": [("ppo@kl_coef=0.1", 2.0, 0.00), ("ppo@kl_coef=0.01", 4.0, 0.10)],
    "kto": [("kto", 9.0, 0.05)],  # a single point beyond every frontier's KL range
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Comparison, Outcome]:
    tmp_path = tmp_path_factory.mktemp("swept")
    cfg = EvalConfig(generation=GenerationConfig(max_new_tokens=16), bootstrap_samples=50)
    runs = {"sft": write_stage(tmp_path, "sft", "sft", SFT_GOLD, True)}
    for family, points in POINTS.items():
        for name, kl, shift in points:
            run = write_stage(tmp_path, name, family, [[g + shift for g in row] for row in SFT_GOLD], True, kl=kl)
            value = float(name.split("=")[1]) if "=" in name else None
            run.stage = Stage(
                name, {}, family=family, sweep={f"train.{name.split('@')[1].split('=')[0]}": value} if value else {}
            )
            runs[name] = run
    stages = {name: run.stage for name, run in runs.items()}
    comparison = Comparison("swept", tmp_path, [1], {"tracking": {"mode": "disabled"}}, stages, cfg, baseline_stage="sft")
    outcome = Outcome(comparison, {1: runs})
    outcome.results = aggregate(comparison, outcome.runs)
    write_outputs(comparison, outcome)
    return comparison, outcome


def test_frontier_points_and_matched_kl_by_hand(swept):
    comparison, _ = swept
    frontier = json.loads((comparison.output_dir / "frontier.json").read_text())
    assert frontier["judge"] == "gold_reward_mean" and frontier["num_prompts"] == 4 and frontier["bootstrap_samples"] == 50
    families = {f["family"]: f for f in frontier["families"]}
    assert [p["name"] for p in families["dpo"]["points"]] == ["dpo@beta=0.3", "dpo@beta=0.1"]  # sorted by KL
    base = sum(map(sum, SFT_GOLD)) / 8  # sft's mean gold reward, 0.425
    assert families["ppo"]["points"][1]["kl"] == 4.0 and families["ppo"]["points"][1]["reward"] == pytest.approx(base + 0.1)
    assert families["dpo"]["points"][0]["sweep"] == {"train.beta": 0.3} and not families["dpo"]["anchored"]
    pairs = {(m["a"], m["b"]): m for m in frontier["matched_kl"]}
    m = pairs["dpo", "ppo"]
    # overlap KL 2..3: dpo = base + 0.1 (KL - 1), ppo = base + 0.05 (KL - 2); difference 0.2 + 0.05 (KL - 2)
    assert (m["kl_low"], m["kl_high"]) == (2.0, 3.0) and not m["at_point"]
    assert [g["kl"] for g in m["grid"]] == pytest.approx([2.0, 2.25, 2.5, 2.75, 3.0])
    assert [g["difference"] for g in m["grid"]] == pytest.approx([0.2, 0.2125, 0.225, 0.2375, 0.25])
    assert m["verdict"] == "above"  # every prompt moves alike: the paired bootstrap intervals are the differences
    assert sorted(frontier["not_comparable"]) == [["dpo", "kto"], ["ppo", "kto"]]


def test_the_report_states_the_matched_kl_verdicts_and_holm(swept):
    comparison, _ = swept
    report = (comparison.output_dir / "report.md").read_text()
    assert "### At matched KL" in report
    assert "- `dpo` lies above `ppo` over KL 2–3 (gold reward difference +0.200 [+0.200, +0.200] at 2" in report
    assert "- No common KL range (no comparison at matched KL is possible): `dpo` and `kto`; `ppo` and `kto`." in report
    beat = next(line for line in report.splitlines() if line.startswith("- **Beat `sft`**"))
    assert "Holm-corrected across 5 policies at 5%" in beat
    # ppo@kl_coef=0.1 is sft itself (shift 0); every other point is shifted on every prompt alike: zero stderr, p = 0
    assert all(f"`{n}`" in beat for n in ("dpo@beta=0.3", "dpo@beta=0.1", "ppo@kl_coef=0.01", "kto"))
    assert (comparison.output_dir / "reward_vs_kl.png").stat().st_size > 10_000
