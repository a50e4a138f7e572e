"""DPO on the real model (SmolLM2-135M-Instruct, fp32, CPU or GPU): the workbench recipe vs a plain TRL
DPOTrainer script, with and without gradient checkpointing and LoRA, side by side.

Like for like: both sides train on the same hh-rlhf pairs (conversational; the same chat template, checked
to give identical token ids), in the file's order (sequential sampler on both: our default length-grouped
order and TRL's random order would put different pairs in the same steps), one epoch of batch x steps
pairs that fit max_length whole (the two truncation rules differ by design), so both count the same
tokens -- asserted per run. Same batch size, steps, learning rate, precision and LoRA config; every run
is a fresh process, and runs alternate (ours then trl, then trl then ours, ... per setting) so a busy machine slows
both. Reported per setting: s/step and tokens/s from TRL's own counters (train_runtime, num_tokens),
peak RSS of the process, and the ours/trl ratios with their spread over repetitions.

  workbench fetch-model smollm2-135m runs/smollm2-135m     # once (needs .[real-model])
  python benchmarks/real_model_dpo.py --model runs/smollm2-135m --reps 2 --steps 4 \\
      --json benchmarks/results/real_model_dpo.json
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

import yaml

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
SETTINGS = {  # name: (lora, gradient_checkpointing)
    "full": (False, False),
    "full+gc": (False, True),
    "lora": (True, False),
    "lora+gc": (True, True),
}
# Runs a command and prints its peak RSS and CPU seconds (user + sys of this wrapper's only child), the same on both sides.
RSS_WRAPPER = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); print('PEAK_RSS_KB', u.ru_maxrss, file=sys.stderr); "
    "print('CPU_S', u.ru_utime + u.ru_stime, file=sys.stderr); sys.exit(r.returncode)"
)


def trl_token_ids(tokenizer: Any, row: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids exactly as TRL's DPOTrainer._prepare_dataset makes them (before its collator's cut)."""
    from trl.trainer.dpo_trainer import _tokenize, common_prefix_length

    p = _tokenize(tokenizer, row["prompt"], add_generation_prompt=True)["input_ids"]
    pc = _tokenize(tokenizer, row["prompt"] + row["chosen"])["input_ids"]
    pr = _tokenize(tokenizer, row["prompt"] + row["rejected"])["input_ids"]
    n = min(common_prefix_length(p, pc), common_prefix_length(p, pr))
    return p[:n], pc[n:], pr[n:]


def write_pairs(out: Path, model: Path, n: int, max_length: int) -> tuple[Path, list[int]]:
    """The first n hh-rlhf pairs (conversational form) that fit max_length whole, and each pair's token count.

    Only whole pairs, checked to tokenize to the same ids on both sides: the two truncation rules differ on
    purpose (ours cuts the prompt's start to max_prompt_length and keeps the responses; TRL's collator keeps
    the first max_length tokens and drops pairs whose prompt alone fills it), so with cut pairs the two sides
    would train on different tokens. Token count of a pair = what TRL's num_tokens adds for it (the attention
    mask of prompt+chosen and prompt+rejected).
    """
    from transformers import AutoTokenizer

    from workbench.config import DataConfig, ModelConfig, SourceConfig
    from workbench.data.formatting import TokenizationSettings, tokenize_pair
    from workbench.data.pipeline import prepare
    from workbench.models import load_tokenizer

    prepared = prepare(
        DataConfig(sources=[SourceConfig(path=str(HH), format="hh-rlhf")], on_invalid="drop", eval_split=0.0), seed=0
    )
    ours_tok = load_tokenizer(ModelConfig(name_or_path=str(model)))
    trl_tok = AutoTokenizer.from_pretrained(model)
    whole = TokenizationSettings(max_length=10**9, max_prompt_length=10**9)
    path, counts = out / "pairs.jsonl", []
    with open(path, "w", encoding="utf-8") as fh:
        for row in prepared.train:
            pair = {k: row[k] for k in ("prompt", "chosen", "rejected")}
            t = tokenize_pair(ours_tok, pair, whole)
            if len(t.prompt_ids) + max(len(t.chosen_ids), len(t.rejected_ids)) > max_length:
                continue
            if (t.prompt_ids, t.chosen_ids, t.rejected_ids) != trl_token_ids(trl_tok, pair):
                raise SystemExit(f"pair {row['pair_id']}: the workbench and TRL tokenize it differently")
            fh.write(json.dumps(pair) + "\n")
            counts.append(2 * len(t.prompt_ids) + len(t.chosen_ids) + len(t.rejected_ids))
            if len(counts) == n:
                return path, counts
    raise SystemExit(f"only {len(counts)} hh-rlhf pairs fit max_length {max_length} whole; lower --steps or raise it")


def measured(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float, float]:
    """(result, wall seconds, peak RSS in MB, whole-process CPU seconds) of one fresh process.

    CPU seconds are the steadier figure on a shared machine (runs use one thread: OMP_NUM_THREADS=1)."""
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True, cwd=REPO)
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{res.stderr[-3000:]}")
    kb = next(int(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    cpu = next(float(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("CPU_S"))
    return res, wall, kb / 1024, cpu


def run_ours(model: Path, data: Path, out: Path, a: argparse.Namespace, lora: bool, gc: bool) -> dict:
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": str(model), "dtype": "float32", **({"lora": {}} if lora else {})},
        "data": {
            "sources": [{"path": str(data), "format": "conversational"}],
            "eval_split": 0.0,
            "max_length": a.max_length,
            "max_prompt_length": a.max_length // 2,
        },
        "train": {
            "per_device_train_batch_size": a.batch,
            "max_steps": a.steps,
            "learning_rate": 1e-4,
            "gradient_checkpointing": gc,
            "train_sampling_strategy": "sequential",  # the file's order on both sides: same pairs in the same steps
            "logging_steps": a.steps,
            "save_strategy": "no",
            "eval_strategy": "no",
        },
        "tracking": {"mode": "disabled"},
        "output_dir": str(out),
        "seed": 0,
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    _, wall, rss, cpu = measured([sys.executable, "-m", "workbench", "train", str(path)])
    final: dict = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        final.update(json.loads(line))
    return {
        "train_runtime": final["train/summary/runtime"],
        "num_tokens": final["train/num_tokens"],
        "wall": wall,
        "rss_mb": rss,
        "cpu_s": cpu,
    }


def run_trl(model: Path, data: Path, out: Path, a: argparse.Namespace, lora: bool, gc: bool) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "trl_dpo_baseline.py"), "--model", str(model), "--data", str(data)]
    cmd += ["--out", str(out), "--batch", str(a.batch), "--max-length", str(a.max_length), "--steps", str(a.steps)]
    cmd += ["--sampler", "sequential"] + (["--lora"] if lora else []) + (["--gradient-checkpointing"] if gc else [])
    res, wall, rss, cpu = measured(cmd)
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "wall": wall, "rss_mb": rss, "cpu_s": cpu}


def side_summary(rows: list[dict], steps: int) -> dict[str, Any]:
    sps = [r["train_runtime"] / steps for r in rows]
    tps = [r["num_tokens"] / r["train_runtime"] for r in rows]
    return {
        "s_per_step": statistics.fmean(sps),
        "s_per_step_runs": sps,
        "tokens_per_s": statistics.fmean(tps),
        "num_tokens": sorted({r["num_tokens"] for r in rows}),
        "peak_rss_mb": max(r["rss_mb"] for r in rows),
        "wall_s": statistics.fmean(r["wall"] for r in rows),
        "process_cpu_s": statistics.fmean(r["cpu_s"] for r in rows),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="output of `workbench fetch-model smollm2-135m DIR`")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--json", type=Path, help="write the per-run rows and the summary here")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data, counts = write_pairs(tmp, Path(a.model), a.batch * a.steps, a.max_length)  # one epoch, no pair twice
        expected = sum(counts)
        print(f"{len(counts)} pairs, {expected} tokens (prompt+chosen + prompt+rejected), identical ids on both sides")
        rows: dict[tuple[str, str], list[dict]] = {}
        for rep in range(a.reps):
            for setting in a.settings:
                lora, gc = SETTINGS[setting]
                sides = (("ours", run_ours), ("trl", run_trl))
                for side, fn in sides if rep % 2 == 0 else sides[::-1]:  # each side goes first in turn
                    r = fn(Path(a.model), data, tmp / f"{side}-{setting}-{rep}", a, lora, gc)
                    if r["num_tokens"] != expected:
                        raise SystemExit(f"{side} {setting} counted {r['num_tokens']} tokens, expected {expected}")
                    rows.setdefault((side, setting), []).append(r)
                    print(
                        f"rep {rep} {side:<4} {setting:<8} {r['train_runtime'] / a.steps:.2f} s/step, {r['rss_mb']:.0f} MB",
                        flush=True,
                    )
                    report(a, expected, rows, final=False)
    report(a, expected, rows, final=True)


def report(a: argparse.Namespace, expected: int, rows: dict[tuple[str, str], list[dict]], final: bool) -> None:
    """Print the table (when final) and write the JSON (after every run, so a stopped benchmark keeps what it measured)."""
    reps = min((len(v) for v in rows.values()), default=0)
    head = f"SmolLM2-135M-Instruct fp32, batch {a.batch}, steps {a.steps}, max_length {a.max_length}, reps {reps}"
    if final:
        print(f"\n{head}, {expected} tokens per run on both sides")
    result: dict[str, Any] = {"settings": vars(a) | {"json": None}, "tokens_per_run": expected, "per_setting": {}}
    for setting in a.settings:
        if not rows.get(("trl", setting)):
            continue
        n = len(rows[("trl", setting)])
        ours, trl = (side_summary(rows[(side, setting)][:n], a.steps) for side in ("ours", "trl"))
        ratios = [t["train_runtime"] / o["train_runtime"] for o, t in zip(rows[("ours", setting)], rows[("trl", setting)])]
        spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        cpu_ratios = [t["cpu_s"] / o["cpu_s"] for o, t in zip(rows[("ours", setting)], rows[("trl", setting)])]
        cpu_spread = statistics.stdev(cpu_ratios) if len(cpu_ratios) > 1 else 0.0
        rss = ours["peak_rss_mb"] / trl["peak_rss_mb"]
        if final:
            for side, sm in (("ours", ours), ("trl", trl)):
                print(
                    f"{side + ' ' + setting:<14} s/step {sm['s_per_step']:6.2f} (runs {', '.join(f'{x:.2f}' for x in sm['s_per_step_runs'])})"
                    f"  tokens/s {sm['tokens_per_s']:7.1f}  peak RSS {sm['peak_rss_mb']:7.0f} MB  wall {sm['wall_s']:.0f}s"
                )
            print(
                f"{'':<14} ours/trl tokens/s {statistics.fmean(ratios):.3f} +- {spread:.3f}; tokens per process CPU-s "
                f"{statistics.fmean(cpu_ratios):.3f} +- {cpu_spread:.3f} (CPU s ours {ours['process_cpu_s']:.0f}, trl "
                f"{trl['process_cpu_s']:.0f}); peak RSS ours/trl {rss:.2f}"
            )
        result["per_setting"][setting] = {
            "reps": n,
            "ours": ours,
            "trl": trl,
            "tokens_per_s_ratio_ours_over_trl": statistics.fmean(ratios),
            "ratio_stdev": spread,
            "ratio_per_rep": ratios,
            "process_cpu_ratio_trl_over_ours": statistics.fmean(cpu_ratios),
            "process_cpu_ratio_stdev": cpu_spread,
            "peak_rss_ratio_ours_over_trl": rss,
            "runs": {side: rows[(side, setting)][:n] for side in ("ours", "trl")},
        }
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
