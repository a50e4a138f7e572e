"""Our PPO (recipe defaults) against plain TRL GRPOTrainer on the same tiny model, prompts, reward and budget.

Setting (issue 11): a fresh `workbench tiny-model`, a rule reward, 100 updates of 16 completions x 16
new tokens, lr 3e-3, temperature 1, one process. Runs alternate (GRPO, PPO, GRPO, PPO, ...) in one
invocation so machine load hits both alike; each run is a whole process, timed from outside.
Prints, per run, the mean reward of the first 5 and last 5 updates and the wall time, then per
method the mean and spread of the gain and the PPO/GRPO wall-time ratio of each pair.

    python benchmarks/ppo_vs_grpo.py --seeds 0 1 2 --rewards vowels first_half --save benchmarks/results/ppo_vs_grpo.json
    python benchmarks/ppo_vs_grpo.py --seeds 0 --rewards first_half --ppo-set train.kl_coef=0.1   # tuning: one seed, an override
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
REWARD_OF = {v: k for k, v in REWARDS.items()}


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


def drift(policy_dir: Path, reference_dir: Path, recipe_path: Path, seed: int, prompts_used: int = 32) -> dict[str, float]:
    """The same ending-state measure for both methods: 4 completions each for `prompts_used` training prompts,
    sampled at T = 1 from the final policy (full distribution), scored with the run's reward; sequence KL to the
    starting model (k1: sum of log pi - log pi_ref over the sampled tokens, unbiased), per-token entropy, finished share."""
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.config import GenerationConfig, load_recipe
    from workbench.data.formatting import prompt_ids
    from workbench.models import load_tokenizer
    from workbench.sampling.generation import sample_and_score
    from workbench.sampling.logprobs import completion_batch, logprobs_and_entropy

    recipe = load_recipe(recipe_path)
    tok = load_tokenizer(recipe.model)
    prompts = prompts_of(recipe)[:prompts_used]
    ids = [prompt_ids(tok, p) for p in prompts]
    policy = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(reference_dir).eval()
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, top_k=0, top_p=1.0, batch_size=64)
    score = reward_fn(REWARD_OF[recipe.reward_model.function])
    samples = sample_and_score(policy, tok, ids, prompts, cfg, 10_000 + seed, score, num_samples=4)
    batch = completion_batch(ids, samples.completions, tok.pad_token_id, "cpu")
    mask = batch["response_mask"]
    with torch.no_grad():
        kw = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        lp, ent = logprobs_and_entropy(policy(**kw).logits, batch, 1.0)
        lr, _ = logprobs_and_entropy(reference(**kw).logits, batch, 1.0, False)
    return {
        "end_kl": float(((lp - lr) * mask).sum(1).mean()),
        "end_entropy": float((ent * mask).sum() / mask.sum()),
        "end_reward": sum(samples.scores) / len(samples.scores),
        "end_finished": sum(c.finished for c in samples.completions) / len(samples.completions),
    }


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
    trainer.save_model(str(Path(a.out) / "model"))
    logs = trainer.state.log_history
    series = {key: [e[k] for e in logs if k in e] for key, k in (("rewards", "reward"), ("entropy", "entropy"), ("kl", "kl"))}
    print("RESULT " + json.dumps(series))


def run(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds (user + system) of the child process, its stdout); CPU time is less
    sensitive than wall time to other jobs on a shared machine."""
    import resource

    t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return wall, cpu, res.stdout


def gain(rewards: list[float]) -> tuple[float, float]:
    return sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per method: gain mean and sd over seeds, final KL and entropy; per pair: the PPO/GRPO wall-time ratio."""
    out: dict[str, Any] = {}
    for method, rows in results.items():
        if not rows:
            continue
        g = [r["gain"] for r in rows]
        out[method] = {
            "n": len(g),
            "gain_mean": statistics.mean(g),
            "gain_sd": statistics.stdev(g) if len(g) > 1 else 0.0,
            "end_kl_mean": statistics.mean(r["end_kl"] for r in rows),
            "end_entropy_mean": statistics.mean(r["end_entropy"] for r in rows),
            "wall_mean_s": statistics.mean(r["wall_s"] for r in rows),
        }
    if results["grpo"] and results["ppo"]:
        ratios = [p_["wall_s"] / g_["wall_s"] for p_, g_ in zip(results["ppo"], results["grpo"])]
        out["wall_ratio"] = {"per_pair": ratios, "mean": statistics.mean(ratios), "max": max(ratios)}
        cpu = [p_["cpu_s"] / g_["cpu_s"] for p_, g_ in zip(results["ppo"], results["grpo"])]
        out["cpu_ratio"] = {"per_pair": cpu, "mean": statistics.mean(cpu), "max": max(cpu)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rewards", choices=sorted(REWARDS), nargs="+", default=["vowels"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--only", choices=["ppo", "grpo"], default=None)
    p.add_argument("--ppo-set", nargs="*", default=[], help="recipe overrides for PPO, e.g. train.ppo_epochs=1")
    p.add_argument("--save", type=Path, default=None, help="write every run and the summary to this JSON file")
    p.add_argument("--child", choices=["grpo"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--reward", choices=sorted(REWARDS), default="vowels", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return grpo_child(a)
    tmp = Path(tempfile.mkdtemp(prefix="ppo_vs_grpo_"))
    model = tmp / "tiny"
    run([sys.executable, "-m", "workbench", "tiny-model", str(model)])
    report: dict[str, Any] = {"command": " ".join(sys.argv), "ppo_overrides": a.ppo_set, "steps": a.steps, "rewards": {}}
    for reward in a.rewards:
        results: dict[str, list[dict[str, Any]]] = {"grpo": [], "ppo": []}
        for seed in a.seeds:
            name = f"{reward}-{seed}"
            recipe = ppo_recipe(model, tmp / f"ppo-{name}", reward, seed, a.steps, a.ppo_set)
            for method in ("grpo", "ppo"):
                if a.only and method != a.only:
                    continue
                row: dict[str, Any] = {"seed": seed}
                if method == "grpo":
                    cmd = [sys.executable, __file__, "--child", "grpo", "--model", str(model), "--recipe", str(recipe)]
                    cmd += ["--out", str(tmp / f"grpo-{name}"), "--seed", str(seed), "--reward", reward, "--steps", str(a.steps)]
                    wall, cpu, out = run(cmd)
                    logged = json.loads(out.split("RESULT ", 1)[1])
                    rewards = logged["rewards"]
                    row["logged_entropy_first5_last5"] = gain(logged["entropy"]) if len(logged["entropy"]) >= 5 else None
                    row["logged_kl_last5"] = gain(logged["kl"])[1] if len(logged["kl"]) >= 5 else None
                    final = tmp / f"grpo-{name}" / "model"
                else:
                    wall, cpu, _ = run([sys.executable, "-m", "workbench", "train", str(recipe)])
                    run_dir = tmp / f"ppo-{name}"
                    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                    rewards = [m["train/objective/scores"] for m in lines]
                    row["logged_entropy_first5_last5"] = gain([m["train/policy/entropy"] for m in lines])
                    row["logged_kl_last5"] = gain([m["train/objective/kl"] for m in lines])[1]
                    row["explained_variance_last5"] = gain([m["train/val/explained_variance"] for m in lines])[1]
                    row["kl_coef_last"] = lines[-1]["train/kl_coef"]
                    ratio = [m["train/time/learn"] / m["train/time/generate"] for m in lines]
                    row["learn_over_generate"] = statistics.median(ratio)
                    row["diagnosis"] = [d["code"] for d in json.loads((run_dir / "manifest.json").read_text())["diagnosis"]]
                    final = run_dir / "model"
                first, end = gain(rewards)
                row.update(first5=first, last5=end, gain=end - first, wall_s=wall, cpu_s=cpu)
                row.update(drift(final, model, recipe, seed))
                results[method].append(row)
                print(reward, method, json.dumps(row), flush=True)
        report["rewards"][reward] = {"runs": results, "summary": summarize(results)}
    print_table(report)
    if a.save:
        a.save.parent.mkdir(parents=True, exist_ok=True)
        a.save.write_text(json.dumps(report, indent=1))


def table_row(reward: str, s: dict[str, Any]) -> str:
    def cell(m: str, fmt: str) -> str:
        return fmt.format(**s[m]) if m in s else "-"

    gain_fmt = "{gain_mean:+.3f} ± {gain_sd:.3f} ({n})"
    wall = f"{s['wall_ratio']['mean']:.2f}, {s['wall_ratio']['max']:.2f}" if "wall_ratio" in s else "-"
    cpu = f"{s['cpu_ratio']['mean']:.2f}, {s['cpu_ratio']['max']:.2f}" if "cpu_ratio" in s else "-"
    kl = f"{cell('grpo', '{end_kl_mean:.1f}'):>7} / {cell('ppo', '{end_kl_mean:.1f}'):<7}"
    ent = f"{cell('grpo', '{end_entropy_mean:.2f}'):>10} / {cell('ppo', '{end_entropy_mean:.2f}'):<10}"
    return f"{reward:<11} | {cell('grpo', gain_fmt):<20} | {cell('ppo', gain_fmt):<20} | {kl} | {ent} | {wall:<23} | {cpu}"


def print_table(report: dict[str, Any]) -> None:
    print(
        "\nreward      | GRPO gain (n)        | PPO gain (n)         | end KL GRPO / PPO | end entropy GRPO / PPO | wall PPO/GRPO mean, max | CPU s PPO/GRPO mean, max"
    )
    for reward, entry in report["rewards"].items():
        print(table_row(reward, entry["summary"]))
    for reward, entry in report["rewards"].items():
        for row in entry["runs"]["ppo"]:
            print(
                f"{reward} seed {row['seed']}: PPO diagnosis {row['diagnosis'] or 'none'}, learn/generate {row['learn_over_generate']:.2f}"
            )
        for g_, p_ in zip(entry["runs"]["grpo"], entry["runs"]["ppo"]):
            print(
                f"{reward} seed {p_['seed']}: wall PPO {p_['wall_s']:.0f} s / GRPO {g_['wall_s']:.0f} s = {p_['wall_s'] / g_['wall_s']:.2f}; "
                f"CPU {p_['cpu_s']:.0f} s / {g_['cpu_s']:.0f} s = {p_['cpu_s'] / g_['cpu_s']:.2f}"
            )


if __name__ == "__main__":
    main()
