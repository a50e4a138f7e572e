"""Reward-model tokens/s: `workbench train` (method: reward; length-grouped, packed) vs a plain TRL
RewardTrainer script, side by side; same model, HH-RLHF pairs, settings and alternation as
benchmarks/dpo_throughput.py (whose helpers it uses). The score head is initialized independently on
each side, so loss curves are compared between our variants, not against TRL.

  python benchmarks/reward_throughput.py --hidden 256 --layers 4 --steps 20 --reps 2 --save benchmarks/results/reward_throughput.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_throughput import main  # noqa: E402

if __name__ == "__main__":
    main("reward", "trl_reward_baseline.py", {"reward_stats_pairs": 0}, " + score head", __doc__)
