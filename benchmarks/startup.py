"""Start-up time of the CLI, side by side in one run: `--help`, importing the validate module,
`validate` on a recipe, and the library imports it needs (the real TRL config class).

`validate` runs twice per round: cold (an empty WORKBENCH_CACHE, so TRL's config class is imported
and built, and the tokenizer and memory plan are loaded) and warm (the same recipe validated before,
so those pure, import-heavy verdicts come from the memo in cache.memo_json). Also the comparison
recipe of the README main job, warm.

Each command runs in a fresh interpreter REPEATS times; the table gives the median and range
and each row's ratio to a bare `python -c pass`. Also prints the slowest imports of one
`validate` (from `python -X importtime`).

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def slowest_imports(cmd: list[str], env: dict[str, str], top: int = 8) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the top-level imports with the largest cumulative time."""
    res = subprocess.run([sys.executable, "-X", "importtime", *cmd], cwd=REPO, env=env, capture_output=True, text=True)
    found = []
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split("|"))
        if cumulative.isdigit() and not name.startswith(" "):
            found.append((int(cumulative) / 1e6, name))
    return sorted(found, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        subprocess.run(
            [sys.executable, "-m", "workbench", "tiny-model", str(model)], cwd=REPO, env=env, check=True, capture_output=True
        )
        validate = ["-m", "workbench", "validate", "recipes/quickstart_dpo.yaml", "--set", f"model.name_or_path={model}"]
        compare = ["-m", "workbench", "validate", "recipes/quickstart.yaml", "--set", f"base.model.name_or_path={model}"]
        cold_env = {**env, "WORKBENCH_NO_MEMO": "1"}
        warm_env = {**env, "WORKBENCH_CACHE": str(Path(tmp) / "cache")}
        subprocess.run([sys.executable, *validate], cwd=REPO, env=warm_env, capture_output=True, check=False)
        subprocess.run([sys.executable, *compare], cwd=REPO, env=warm_env, capture_output=True, check=False)
        commands = {
            "python -c pass (baseline)": ["-c", "pass"],
            "workbench --help": ["-m", "workbench", "--help"],
            "import workbench.validate": ["-c", "import workbench.validate"],
            "from trl import DPOConfig": ["-c", "from trl import DPOConfig"],
            "from transformers import TrainingArguments": ["-c", "from transformers import TrainingArguments"],
            "validate quickstart_dpo (cold)": validate,
            "validate quickstart_dpo (warm)": validate,
            "validate quickstart, 8 stages (warm)": compare,
        }
        envs = {name: cold_env if "cold" in name else warm_env if "warm" in name else env for name in commands}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):  # interleaved, so machine load affects every row alike
            for name, cmd in commands.items():
                times[name].append(timed([sys.executable, *cmd], envs[name]))
        base = statistics.median(times["python -c pass (baseline)"])
        print(f"{'command':<42} {'median s':>9} {'min':>7} {'max':>7} {'x baseline':>11}   (n={args.repeats})")
        for name, values in times.items():
            med = statistics.median(values)
            print(f"{name:<42} {med:9.2f} {min(values):7.2f} {max(values):7.2f} {med / base:11.1f}")
        print("\nslowest top-level imports of a cold `workbench validate` (cumulative s):")
        for seconds, name in slowest_imports(validate, cold_env):
            print(f"  {seconds:6.2f}  {name}")


if __name__ == "__main__":
    main()
