"""DPO tokens/s: `workbench train` (length-grouped, packed) vs a plain TRL DPOTrainer script, side by side.

Same locally built random Llama model (`--hidden`, `--layers`: big enough that a step is compute,
not Python), same pairs (real HH-RLHF helpful-base, written once as text JSONL that both sides read
and tokenize), same batch size, steps, max length, precision and seed. Runs alternate (every
variant once per rep, the order rotated each rep) so machine noise hits all; each run is a fresh
process, on one thread (OMP_NUM_THREADS=1). Figures per run: training-only tokens/s = TRL's own
`num_tokens / train_runtime` (real, non-padding tokens on both sides); whole-process tokens/s =
num_tokens / process wall time; and tokens per whole-process CPU-second (user + sys), the figure
least disturbed by other load on a shared machine. Ratios are taken within a rep, then averaged.
Loss curves: every step is logged on both sides; a variant with grouping off must match plain TRL.

Pairs are kept only if they fit `--max-length` untruncated (prompt <= half), so that both sides
train on the same token ids: the data layer keeps prompt ends, TRL keeps sequence starts.

  python benchmarks/dpo_throughput.py --hidden 256 --layers 4 --steps 20 --reps 2 --save benchmarks/results/dpo_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one core per run: polite, and CPU time measures work

# name -> our recipe's `train:` additions (None: the plain TRL script)
VARIANTS: dict[str, dict | None] = {
    "trl": None,
    "ours_padded": {"train_sampling_strategy": "random"},
    "ours_packed": {"train_sampling_strategy": "random", "packing": True},
    "ours_grouped": {"train_sampling_strategy": "group_by_length"},
    "ours_grouped_packed": {"train_sampling_strategy": "group_by_length", "packing": True},
}


def write_pairs(out: Path, n: int, model: Path, max_length: int) -> tuple[Path, dict]:
    """HH-RLHF pairs as text (prompt, chosen, rejected), those that fit max_length untruncated."""
    from transformers import AutoTokenizer

    from workbench.config import DataConfig, SourceConfig
    from workbench.data.pipeline import prepare

    tok = AutoTokenizer.from_pretrained(str(model))
    prepared = prepare(
        DataConfig(sources=[SourceConfig(path=str(HH), format="hh-rlhf")], on_invalid="drop", eval_split=0.0), seed=0
    )

    def text(value: object) -> str:
        return value if isinstance(value, str) else "\n".join(f"{m['role']}: {m['content']}" for m in value)  # type: ignore[index]

    def reply(value: object) -> str:
        return (value if isinstance(value, str) else value[-1]["content"]).strip()  # type: ignore[index]

    path = out / "pairs.jsonl"
    lengths = []
    with open(path, "w", encoding="utf-8") as fh:
        for row in prepared.train:
            # the prompt ends on a token boundary ("\n"), so both sides split prompt/response at the same token
            prompt = text(row["prompt"]) + "\nassistant:\n"
            chosen, rejected = reply(row["chosen"]), reply(row["rejected"])
            p = len(tok(prompt)["input_ids"])
            longest = max(len(tok(prompt + c)["input_ids"]) for c in (chosen, rejected)) + 1  # + EOS
            if p > max_length // 2 - 2 or longest > max_length - 2 or not chosen.strip() or not rejected.strip():
                continue
            fh.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
            lengths.append(longest)
            if len(lengths) == n:
                break
    lengths.sort()
    stats = {
        "pairs": len(lengths),
        "min": lengths[0],
        "median": lengths[len(lengths) // 2],
        "p90": lengths[int(0.9 * len(lengths))],
        "max": lengths[-1],
    }
    return path, stats


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the child: user + sys, stdout). CPU seconds are the steadier figure on a shared machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, env={**os.environ, **THREADS})
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), res.stdout


def run_ours(model: Path, data: Path, out: Path, a: argparse.Namespace, train: dict, method: str = "dpo") -> dict:
    recipe = {
        "method": method,
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {
            "sources": [{"path": str(data), "format": "preference"}],
            "eval_split": 0.0,
            "max_length": a.max_length,
            "max_prompt_length": a.max_length // 2,
        },
        "train": {
            "per_device_train_batch_size": a.batch,
            "max_steps": a.steps,
            "learning_rate": 1e-4,
            "gradient_checkpointing": False,
            "logging_steps": 1,
            "save_strategy": "no",
            **train,
        },
        "tracking": {"mode": "disabled"},
        "output_dir": str(out),
        "seed": 0,
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    wall, cpu, _ = timed([sys.executable, "-m", "workbench", "train", str(path)])
    final, losses = {}, []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        final.update(entry)
        if "train/loss" in entry:
            losses.append(entry["train/loss"])
    return {
        "train_runtime": final["train/summary/runtime"],
        "num_tokens": final["train/num_tokens"],
        "wall": wall,
        "cpu": cpu,
        "losses": losses,
    }


def run_baseline(model: Path, data: Path, out: Path, a: argparse.Namespace, script: str = "trl_dpo_baseline.py") -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / script), "--model", str(model), "--data", str(data)]
    cmd += ["--out", str(out), "--batch", str(a.batch), "--max-length", str(a.max_length), "--steps", str(a.steps)]
    wall, cpu, stdout = timed(cmd)
    return {**json.loads(stdout.strip().splitlines()[-1]), "wall": wall, "cpu": cpu}


def summarize(rows: dict[str, list[dict]], steps: int) -> dict:
    out = {}
    base = rows["trl"]
    for name, runs in rows.items():
        train_tps = [r["num_tokens"] / r["train_runtime"] for r in runs]
        wall_tps = [r["num_tokens"] / r["wall"] for r in runs]
        ratios = [t / (b["num_tokens"] / b["train_runtime"]) for t, b in zip(train_tps, base)]
        wall_ratios = [t / (b["num_tokens"] / b["wall"]) for t, b in zip(wall_tps, base)]
        cpu_tps = [r["num_tokens"] / r["cpu"] for r in runs]
        cpu_ratios = [t / (b["num_tokens"] / b["cpu"]) for t, b in zip(cpu_tps, base)]
        loss_gap = max(abs(x - y) for x, y in zip(runs[0]["losses"][:steps], base[0]["losses"][:steps]))
        out[name] = {
            "train_tokens_per_s": train_tps,
            "process_tokens_per_s": wall_tps,
            "ratio_train_vs_trl": ratios,
            "ratio_process_vs_trl": wall_ratios,
            "process_tokens_per_cpu_s": cpu_tps,
            "ratio_process_cpu_vs_trl": cpu_ratios,
            "num_tokens": runs[0]["num_tokens"],
            "wall_s": [r["wall"] for r in runs],
            "train_runtime_s": [r["train_runtime"] for r in runs],
            "max_abs_loss_gap_vs_trl_first_steps": loss_gap,
            "losses": runs[0]["losses"],
        }
    return out


def table(summary: dict) -> str:
    def ms(xs: list[float], fmt: str) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.fmean(xs):{fmt}} ± {sd:{fmt}}"

    lines = [
        "| variant | train tok/s | x TRL (train) | whole-process tok/s | x TRL (process) | tok per CPU-s (process) | x TRL (CPU) "
        "| tokens | max abs loss gap vs TRL |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {ms(s['train_tokens_per_s'], '.0f')} | {ms(s['ratio_train_vs_trl'], '.2f')} | "
            f"{ms(s['process_tokens_per_s'], '.0f')} | {ms(s['ratio_process_vs_trl'], '.2f')} | "
            f"{ms(s['process_tokens_per_cpu_s'], '.0f')} | {ms(s['ratio_process_cpu_vs_trl'], '.2f')} | {s['num_tokens']:.0f} | "
            f"{s['max_abs_loss_gap_vs_trl_first_steps']:.2e} |"
        )
    return "\n".join(lines)


def main(
    method: str = "dpo",
    baseline_script: str = "trl_dpo_baseline.py",
    extra_train: dict | None = None,
    model_note: str = "",
    doc: str | None = __doc__,
) -> None:
    """Parse the command line and run every variant alternating; shared with reward_throughput.py."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--save", type=Path, help="write the figures as JSON here")
    a = p.parse_args()
    if "trl" not in a.variants:
        a.variants.insert(0, "trl")
    from workbench.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_tiny_model(tmp / "model", hidden_size=a.hidden, num_layers=a.layers)
        data, lengths = write_pairs(tmp, a.pairs, model, a.max_length)
        print(f"pairs: {lengths}", flush=True)
        rows: dict[str, list[dict]] = {v: [] for v in a.variants}
        for rep in range(a.reps):
            order = a.variants[rep % len(a.variants) :] + a.variants[: rep % len(a.variants)]
            for name in order:
                out = tmp / f"{name}{rep}"
                train = VARIANTS[name]
                if train is None:
                    rows[name].append(run_baseline(model, data, out, a, script=baseline_script))
                else:
                    rows[name].append(run_ours(model, data, out, a, {**train, **(extra_train or {})}, method=method))
                r = rows[name][-1]
                print(
                    f"rep {rep} {name}: {r['num_tokens'] / r['train_runtime']:.0f} tok/s train, wall {r['wall']:.1f}s", flush=True
                )
    summary = summarize(rows, a.steps)
    settings = {k: v for k, v in vars(a).items() if k != "save"}
    print(f"settings: {settings}; model: Llama hidden {a.hidden}, {a.layers} layers{model_note}, fp32, sdpa; data: {lengths}")
    print(table(summary))
    if a.save:
        a.save.parent.mkdir(parents=True, exist_ok=True)
        a.save.write_text(json.dumps({"settings": settings, "lengths": lengths, "summary": summary, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
