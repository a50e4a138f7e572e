"""Our PPO (recipe defaults) against plain TRL GRPOTrainer on the same tiny model, prompts, reward and budget.

Setting (issue 11): a fresh `workbench tiny-model`, a rule reward, 100 updates of 16 completions x 16
new tokens, lr 3e-3, temperature 1, one process. Runs alternate (GRPO, PPO, GRPO, PPO, ...) in one
invocation so machine load hits both alike; each run is a whole process, timed from outside.
Prints, per run, the mean reward of the first 5 and last 5 updates and the wall time, then per
method the mean and spread of the gain and the PPO/GRPO wall-time ratio of each pair.

    python benchmarks/ppo_vs_grpo.py --seeds 0 1 2 --reward vowels
    python benchmarks/ppo_vs_grpo.py --seeds 0 --reward first_half   # a second task: letters a-m
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def first_half_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Share of the letters in each completion that come from the first half of the alphabet (a-m)."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else " ".join(m["content"] for m in c)
        letters = [ch for ch in text.lower() if "a" <= ch <= "z"]
        out.append(sum(ch <= "m" for ch in letters) / len(letters) if letters else 0.0)
    return out


REWARDS = {
    "vowels": "workbench.data.synthetic:vowel_reward",
    "first_half": f"{Path(__file__).resolve()}:first_half_reward",
}


def reward_fn(name: str) -> Any:
    from workbench.scoring import import_function

    return import_function(REWARDS[name])


def prompts_of(recipe: Any) -> list[str]:
    """The training prompts exactly as the workbench prepares them for PPO."""
    from workbench.data.pipeline import prepare
    from workbench.models import load_tokenizer

    tokenizer = load_tokenizer(recipe.model)
    prepared = prepare(recipe.data, recipe.data_seed, tokenizer, kind="prompt")
    return [row["prompt"] for row in prepared.train]


def ppo_recipe(model: Path, out: Path, reward: str, seed: int, steps: int, overrides: list[str]) -> Path:
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "ppo.yaml").read_text())
    recipe["model"]["name_or_path"] = str(model)
    recipe["reward_model"] = {"function": REWARDS[reward]}
    recipe["generation"].update(max_new_tokens=16, temperature=1.0)
    recipe["train"].update(learning_rate=3e-3, max_steps=steps, per_device_train_batch_size=16, save_steps=0)
    recipe["tracking"] = {"mode": "disabled"}
    recipe["output_dir"] = str(out)
    recipe["seed"] = seed
    for item in overrides:  # exploration only: `train.ppo_epochs=1`; the reported figures use the recipe as shipped
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        recipe.setdefault(section, {})[name] = yaml.safe_load(value)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def grpo_child(a: argparse.Namespace) -> None:
    """A plain TRL GRPOTrainer script, as a user would write it (defaults, num_generations=4)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from workbench.config import load_recipe

    recipe = load_recipe(a.recipe)
    prompts = prompts_of(recipe)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    args = GRPOConfig(
        output_dir=a.out,
        per_device_train_batch_size=16,
        num_generations=4,
        max_completion_length=16,
        learning_rate=3e-3,
        temperature=1.0,
        max_steps=a.steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=a.seed,
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_fn(a.reward),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
    )
    trainer.train()
    rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    print("RESULT " + json.dumps({"rewards": rewards}))


def run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return wall, res.stdout


def gain(rewards: list[float]) -> tuple[float, float]:
    return sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--reward", choices=sorted(REWARDS), default="vowels")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--only", choices=["ppo", "grpo"], default=None)
    p.add_argument("--ppo-set", nargs="*", default=[], help="recipe overrides for PPO, e.g. train.ppo_epochs=1")
    p.add_argument("--child", choices=["grpo"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return grpo_child(a)
    tmp = Path(tempfile.mkdtemp(prefix="ppo_vs_grpo_"))
    model = tmp / "tiny"
    run([sys.executable, "-m", "workbench", "tiny-model", str(model)])
    results: dict[str, list[dict[str, float]]] = {"grpo": [], "ppo": []}
    for seed in a.seeds:
        recipe = ppo_recipe(model, tmp / f"ppo-{seed}", a.reward, seed, a.steps, a.ppo_set)
        for method in ("grpo", "ppo"):
            if a.only and method != a.only:
                continue
            if method == "grpo":
                cmd = [sys.executable, __file__, "--child", "grpo", "--model", str(model), "--recipe", str(recipe)]
                cmd += ["--out", str(tmp / f"grpo-{seed}"), "--seed", str(seed), "--reward", a.reward, "--steps", str(a.steps)]
                wall, out = run(cmd)
                rewards = json.loads(out.split("RESULT ", 1)[1])["rewards"]
            else:
                wall, _ = run([sys.executable, "-m", "workbench", "train", str(recipe)])
                lines = (tmp / f"ppo-{seed}" / "metrics.jsonl").read_text().splitlines()
                rewards = [json.loads(x)["train/objective/scores"] for x in lines]
                last = json.loads(lines[-1])
                extra = {k: last[k] for k in ("train/objective/kl", "train/finished_share", "train/val/explained_variance")}
            first, end = gain(rewards)
            row = {"seed": seed, "first5": first, "last5": end, "gain": end - first, "wall_s": wall}
            if method == "ppo":
                row.update(extra)
            results[method].append(row)
            print(method, json.dumps(row), flush=True)
    for method, rows in results.items():
        if rows:
            g = [r["gain"] for r in rows]
            spread = statistics.stdev(g) if len(g) > 1 else 0.0
            print(
                f"{method}: gain mean {statistics.mean(g):.3f} (sd {spread:.3f}, n={len(g)}), wall mean {statistics.mean(r['wall_s'] for r in rows):.1f} s"
            )
    if results["grpo"] and results["ppo"]:
        ratios = [p_["wall_s"] / g_["wall_s"] for p_, g_ in zip(results["ppo"], results["grpo"])]
        print("PPO/GRPO wall-time ratio per pair: " + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
