"""Where the README main job's time goes: `workbench tiny-model` + `workbench compare recipes/quickstart.yaml`
in a fresh temporary directory, with a per-stage breakdown.

Wall time on a shared 2-core machine depends on what else runs, so the script also records the
user+sys CPU seconds of the whole job (every child process included, from `getrusage`) and the load
average before and after. The breakdown comes from what the workbench records anyway, plus the time
each progress line of `compare` reached this script:

- per stage: the stage process's wall (`stage.json` seconds); inside it the run itself (tracker start
  to finish, `manifest.json` wall_seconds) and the trainer's own loop (`train/summary/runtime` in
  `metrics.jsonl`, TRL methods) -- so start-up (interpreter, imports, preflight) = process - run, and
  set-up/export/W&B inside the run = run - loop;
- evaluation: the reward model's held-out accuracy and each policy's evaluation (from the progress lines);
- report: from the last evaluation line to the end of the process (aggregation, report.md, plots, W&B
  summary run).

    python benchmarks/main_job.py [--keep DIR] [--json OUT.json] [--profile]

`--profile` also runs the compare process under cProfile (the evaluation and report, which run in that
process) and prints its 25 most expensive functions by cumulative time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """user + sys of every child process waited for so far (grandchildren included once reaped)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, list[tuple[float, str]], int]:
    """(wall, cpu, [(seconds since start, line)], exit code), stdout read line by line as it arrives."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    code = proc.wait()
    return time.perf_counter() - t0, cpu_seconds() - c0, lines, code


def last_value(path: Path, key: str) -> float | None:
    value = None
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                value = json.loads(line).get(key, value)
    return value


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def breakdown(out: Path, lines: list[tuple[float, str]], wall: float) -> dict:
    seed_dir = next(out.glob("seed-*"))
    stages = {}
    for line_t, line in lines:
        m = re.search(r"\] (\S+) \((\w+)\): training in", line)
        if m:
            stages[m.group(1)] = {"method": m.group(2), "started": line_t}
    for name, row in stages.items():
        d = seed_dir / name
        process = read(d / "stage.json").get("seconds")
        run = read(d / "manifest.json").get("wall_seconds")
        loop = last_value(d / "metrics.jsonl", "train/summary/runtime")
        row.update(
            process=process,
            startup=(process - run) if process and run else None,
            run=run,
            loop=loop,
            setup_export=(run - loop) if run and loop else None,
        )
    evals, t_prev = {}, None
    for line_t, line in lines:
        if "evaluating" in line and "policies on" in line:
            t_prev = line_t
            evals["inputs"] = line_t - max((r["started"] + (r["process"] or 0) for r in stages.values()), default=0.0)
        m = re.search(r"\] (?:eval \d+/\d+ )?(\S+): (?:evaluated in|evaluation cached|reward model held-out)", line)
        if m and t_prev is not None:
            evals[m.group(1)] = line_t - t_prev
            t_prev = line_t
    return {
        "stages": stages,
        "evaluation": evals,
        "report": wall - t_prev if t_prev is not None else None,
        "training_total": sum(r["process"] or 0 for r in stages.values()),
        "evaluation_total": sum(evals.values()),
    }


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def print_table(result: dict) -> None:
    b = result["breakdown"]
    print(f"\nmain job: wall {result['wall']:.1f} s, user+sys CPU {result['cpu']:.1f} s (all processes)")
    print(f"load average before: {result['load_before']} | after: {result['load_after']}")
    print(f"tiny-model: wall {result['tiny_wall']:.1f} s, CPU {result['tiny_cpu']:.1f} s\n")
    print("| stage | method | process s | start-up s | run s | trainer loop s | set-up/export/W&B s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, r in b["stages"].items():
        print(
            f"| {name} | {r['method']} | {fmt(r['process'])} | {fmt(r['startup'])} | {fmt(r['run'])} | "
            f"{fmt(r['loop'])} | {fmt(r['setup_export'])} |"
        )
    print(f"| **training total** | | {fmt(b['training_total'])} | | | | |")
    print("\n| evaluation step | s |\n|---|---:|")
    for name, s in b["evaluation"].items():
        print(f"| {name} | {fmt(s)} |")
    print(f"| **evaluation total** | {fmt(b['evaluation_total'])} |")
    print(f"| report (aggregate, report.md, plots, W&B summary) | {fmt(b['report'])} |")


def profile_summary(path: Path, top: int = 25) -> None:
    import pstats

    print(f"\ncProfile of the compare process (top {top} by cumulative time):")
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", default=None, help="run in this directory and keep it (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--profile", action="store_true", help="cProfile the compare process")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, out = work / "tiny-model", work / "quickstart"
        before = load()
        tiny_wall, tiny_cpu, _, code = run_timed([sys.executable, "-m", "workbench", "tiny-model", str(model)], env, REPO)
        if code:
            sys.exit("tiny-model failed")
        prof = work / "compare.prof"
        head = [sys.executable, "-m", "cProfile", "-o", str(prof)] if args.profile else [sys.executable]
        cmd = [*head, "-m", "workbench", "compare", "recipes/quickstart.yaml"]
        cmd += ["--set", f"base.model.name_or_path={model}", "--set", f"output_dir={out}"]
        wall, cpu, lines, code = run_timed(cmd, env, REPO)
        (work / "compare.log").write_text("\n".join(f"{t:7.1f} {line}" for t, line in lines) + "\n")
        if code:
            print("\n".join(line for _, line in lines[-20:]))
            sys.exit(f"compare failed (exit {code}); log in {work / 'compare.log'}")
        result = {
            "wall": wall + tiny_wall,
            "cpu": cpu + tiny_cpu,
            "compare_wall": wall,
            "compare_cpu": cpu,
            "tiny_wall": tiny_wall,
            "tiny_cpu": tiny_cpu,
            "load_before": before,
            "load_after": load(),
            "breakdown": breakdown(out, lines, wall),
            "report_md": (out / "report.md").read_text(),
        }
        print_table(result)
        if args.profile:
            profile_summary(prof)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
