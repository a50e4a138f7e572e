"""Reward-model tokens/s: `workbench train` (method: reward; length-grouped, packed) vs a plain TRL
RewardTrainer script, side by side; same model, HH-RLHF pairs, settings and alternation as
benchmarks/dpo_throughput.py (whose helpers it uses). The score head is initialized independently on
each side, so loss curves are compared between our variants, not against TRL.

  python benchmarks/reward_throughput.py --hidden 256 --layers 4 --steps 20 --reps 2 --save benchmarks/results/reward_throughput.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_throughput import run_baseline, run_ours, summarize, table, write_pairs  # noqa: E402

VARIANTS: dict[str, dict | None] = {
    "trl": None,
    "ours_padded": {"train_sampling_strategy": "random"},
    "ours_packed": {"train_sampling_strategy": "random", "packing": True},
    "ours_grouped": {"train_sampling_strategy": "group_by_length"},
    "ours_grouped_packed": {"train_sampling_strategy": "group_by_length", "packing": True},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--save", type=Path)
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
                    rows[name].append(run_baseline(model, data, out, a, script="trl_reward_baseline.py"))
                else:
                    rows[name].append(run_ours(model, data, out, a, {**train, "reward_stats_pairs": 0}, method="reward"))
                r = rows[name][-1]
                print(
                    f"rep {rep} {name}: {r['num_tokens'] / r['train_runtime']:.0f} tok/s train, wall {r['wall']:.1f}s", flush=True
                )
    summary = summarize(rows, a.steps)
    settings = {k: v for k, v in vars(a).items() if k != "save"}
    print(f"settings: {settings}; model: Llama hidden {a.hidden}, {a.layers} layers + score head, fp32, sdpa; data: {lengths}")
    print(table(summary))
    if a.save:
        a.save.parent.mkdir(parents=True, exist_ok=True)
        a.save.write_text(json.dumps({"settings": settings, "lengths": lengths, "summary": summary, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
