"""One tracking interface: W&B run, `metrics.jsonl`, `manifest.json` and `recipe.yaml`.

Only the main process writes. `metrics.jsonl` holds exactly the keys sent to W&B. Secrets
(tokens, keys, passwords, and the values of the usual secret environment variables) never
reach the recipe copy, the manifest, the metrics or the W&B config.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench.config import Recipe, dump_yaml, resolved_dict
from workbench.data.pipeline import write_json
from workbench.errors import WorkbenchError
from workbench.secrets import NOT_SECRET, REDACTED, SECRET_NAME, redact_argv

SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", "OPENAI_API_KEY")
log = logging.getLogger("workbench")
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "datasets", "wandb", "workbench")


def _secret_values() -> list[str]:
    values = [os.environ[name] for name in SECRET_ENV if os.environ.get(name)]
    values += [v for k, v in os.environ.items() if SECRET_NAME.search(k) and k not in NOT_SECRET and len(v) >= 8]
    return sorted(set(values), key=len, reverse=True)


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of `obj` with secret-named string fields and any secret env value replaced."""
    secrets = _secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            name = str(key)
            if isinstance(value, str) and value and SECRET_NAME.search(name) and name not in NOT_SECRET:
                out[key] = REDACTED
            else:
                out[key] = redact(value, secrets)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        for secret in secrets:
            obj = obj.replace(secret, REDACTED)
        return obj
    return obj


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(cwd: str | Path = ".") -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    return {"commit": commit, "dirty": bool(git("status", "--porcelain")) if commit else None}


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


WANDB_MODES = ("online", "offline", "disabled", "shared")
AUTO_INIT_TIMEOUT = 30.0  # seconds `auto` lets a reachable server take before it falls back to offline
TRUE = ("1", "true", "yes", "on")


def wandb_mode_source(mode: str) -> tuple[str, str]:
    """(mode, what decided it). The environment wins over the recipe, as with the HF Trainer, so that
    `WANDB_MODE=disabled` or `WANDB_DISABLED=true` switches W&B off for a whole job."""
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in TRUE:
        return "disabled", "env WANDB_DISABLED"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        env = {"dryrun": "offline", "run": "online"}.get(env, env)
        if env not in WANDB_MODES:
            raise WorkbenchError(f"WANDB_MODE={env!r} in the environment is not a W&B mode; use one of {', '.join(WANDB_MODES)}")
        return env, "env WANDB_MODE"
    if mode != "auto":
        return mode, "recipe tracking.mode"
    if not os.environ.get("WANDB_API_KEY"):
        return "offline", "auto: no WANDB_API_KEY"
    problem = wandb_online_problem()
    return ("offline", f"auto: {problem}") if problem else ("online", "auto: WANDB_API_KEY set")


def wandb_mode(mode: str) -> str:
    return wandb_mode_source(mode)[0]


def wandb_base_url() -> str:
    """The W&B server a run talks to: WANDB_BASE_URL, else wandb's own settings (settings files, its default)."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    from wandb.sdk import wandb_setup

    return str(wandb_setup.singleton().settings.base_url)


def server_problem(url: str, timeout: float = 3.0) -> str | None:
    """Why a TCP connection to `url`'s host (or to the proxy the environment names for it) fails within
    `timeout` seconds, or None. The lookup runs in a thread, since a name lookup takes no timeout of its own."""
    import socket
    import threading
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme) if host and not urllib.request.proxy_bypass(host) else None
    if proxy:
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname or "", via.port or (443 if via.scheme == "https" else 80)
    outcome: dict[str, str] = {}

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = ""
        except OSError as exc:
            outcome["error"] = exc.strerror or str(exc) or type(exc).__name__

    thread = threading.Thread(target=connect, name="workbench-wandb-reach", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if "ok" in outcome:
        return None
    reason = outcome.get("error") or f"no answer within {timeout:g} s"
    return reason + (f", through the proxy {host}:{port}" if proxy else "")


def api_key_problem(key: str) -> str | None:
    """wandb's own format check of an API key (a sentence), or None when the key looks usable."""
    try:
        from wandb.sdk.lib.wbauth.validation import check_api_key
    except ImportError:  # another wandb: its init will say
        return None
    return check_api_key(key)


_online_checks: dict[tuple[str, str], str | None] = {}


def wandb_online_problem(timeout: float = 3.0) -> str | None:
    """Why a W&B run cannot go online from here, as a clause naming no secret, or None: a malformed WANDB_API_KEY,
    or a server that does not answer within `timeout` seconds. Checked before `wandb.init`, which otherwise waits
    its own long timeout in silence and then raises; memoised per key and server for this process."""
    key = os.environ.get("WANDB_API_KEY") or ""
    url = wandb_base_url()
    if (key, url) not in _online_checks:
        bad_key = api_key_problem(key) if key else None
        if bad_key:
            problem: str | None = f"WANDB_API_KEY is not a W&B API key ({bad_key})"
        else:
            unreachable = server_problem(url, timeout)
            problem = f"cannot reach the W&B server {url} ({unreachable})" if unreachable else None
        _online_checks[(key, url)] = problem
    return _online_checks[(key, url)]


def wandb_problems(mode: str) -> list[str]:
    """`validate`'s (and `train`'s) check of online tracking: one sentence when W&B cannot be used online
    (`auto` needs none: it falls back to offline and says so)."""
    resolved, source = wandb_mode_source(mode)
    if resolved != "online":
        return []
    problem = wandb_online_problem()
    if problem is None:
        return []
    where = "`tracking.mode: online`" if source == "recipe tracking.mode" else f"{source}=online"
    return [f"{where}: {problem}; fix that, or use `tracking.mode: auto` to log offline when W&B cannot be reached"]


def wandb_place(project: str, run_dir: Path) -> dict[str, str]:
    """Project and directory of the W&B run, each from the environment when set there, and which source decided."""
    env_project, env_dir = os.environ.get("WANDB_PROJECT"), os.environ.get("WANDB_DIR")
    return {
        "project": env_project or project,
        "project_source": "env WANDB_PROJECT" if env_project else "recipe tracking.project",
        "dir": env_dir or str(run_dir),
        "dir_source": "env WANDB_DIR" if env_dir else "run directory",
    }


def own_wandb_service() -> None:
    """Make this process start a W&B service of its own rather than join one inherited through WANDB_SERVICE.

    A parent that used wandb and lives on (a comparison that logged an evaluation, a notebook, a test runner)
    hands its service to every child process. That service outlives a run killed with kill -9 and keeps its
    run id "in use", so `--resume` fails for as long as the parent lives. A service of the run's own dies with it.
    """
    setup = sys.modules.get("wandb.sdk.wandb_setup")
    current = getattr(setup, "_singleton", None) if setup is not None else None
    if current is None or getattr(current, "_pid", None) != os.getpid():  # nothing of this process's own yet
        os.environ.pop("WANDB_SERVICE", None)


class Tracker:
    """Writes the run directory's records and mirrors metrics to W&B; a no-op off the main process."""

    def __init__(self, recipe: Recipe, run_dir: str | Path, is_main: bool = True, world_size: int = 1):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.world_size = world_size
        self.wandb_run: Any = None
        self.manifest: dict[str, Any] = {}
        self._t0 = time.time()
        self._pending_step: int | None = None
        self._pending: dict[str, float] = {}
        self._written_step: int | None = None  # the last line written, which later logs of its step extend
        self._written: dict[str, Any] = {}
        self._written_offset = 0
        self.print_progress = not sys.stderr.isatty()  # off a terminal: a line per logging step
        self.total_steps: int | None = None
        self._progress_from = (self._t0, 0)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, extra: dict[str, Any] | None = None, resume_step: int | None = None) -> None:
        """Write recipe.yaml and a `running` manifest, open metrics.jsonl and the W&B run.

        A fresh start begins a new metrics log; a resumed one keeps the lines up to the
        checkpoint's step and continues the same W&B run.
        """
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        previous = self._read_manifest() if resume_step is not None else {}
        self._keep_metrics_up_to(resume_step or 0)
        resolved = redact(resolved_dict(self.recipe))
        (self.run_dir / "recipe.yaml").write_text(dump_yaml(resolved), encoding="utf-8")
        self.manifest = {
            "status": "running",
            "method": self.recipe.method,
            "started_at": previous.get("started_at", now()),
            "ended_at": None,
            "resumed_from_step": resume_step,
            "command": redact(redact_argv(sys.argv)),
            "world_size": self.world_size,
            "versions": package_versions(),
            "git": git_state(),
            "hardware": hardware(),
            **(extra or {}),
        }
        self._write_manifest()
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (open for the run)
        self._start_wandb(resolved, resume_id=(previous.get("wandb") or {}).get("id"))

    def _read_manifest(self) -> dict[str, Any]:
        path = self.run_dir / "manifest.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def _keep_metrics_up_to(self, step: int) -> None:
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = [
            line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line)["step"] <= step
        ]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def _start_wandb(self, resolved: dict[str, Any], resume_id: str | None = None) -> None:
        cfg = self.recipe.tracking
        mode, source = wandb_mode_source(cfg.mode)
        place = wandb_place(cfg.project, self.run_dir)
        if mode == "disabled":
            self.update_manifest(wandb={"mode": mode, "mode_source": source})
            return
        import wandb

        Path(place["dir"]).mkdir(parents=True, exist_ok=True)
        own_wandb_service()

        def init(mode: str) -> Any:
            return wandb.init(
                project=place["project"],
                entity=cfg.entity,
                group=cfg.group,
                job_type=cfg.job_type or self.recipe.method,
                tags=redact(cfg.tags) or None,
                name=redact(cfg.name or self.run_dir.name),
                mode=mode,
                dir=place["dir"],
                config=redact({"recipe": resolved, "manifest": self.manifest}),
                reinit="finish_previous",
                **({"id": resume_id, "resume": "allow"} if resume_id else {}),
                **({"settings": wandb.Settings(init_timeout=AUTO_INIT_TIMEOUT)} if source.startswith("auto") else {}),
            )

        auto = source.startswith("auto")
        try:
            self.wandb_run = init(mode)
        except wandb.errors.Error as exc:  # the server refused the key, or stopped answering
            reason = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            if not auto:
                raise WorkbenchError(
                    f"W&B could not start the run online ({reason}); check WANDB_API_KEY and the network, "
                    "or use `tracking.mode: auto` to log offline when W&B cannot be reached"
                ) from None
            mode, source = "offline", f"auto: W&B could not start the run online ({reason})"
            self.wandb_run = init(mode)
        if auto and mode == "offline" and os.environ.get("WANDB_API_KEY"):
            log.warning(
                "W&B: %s, so this run logs offline (tracking.mode auto); upload it later with `wandb sync %s`",
                source.removeprefix("auto: "),
                Path(self.wandb_run.dir).parent,
            )
        self.update_manifest(
            wandb={"mode": mode, "mode_source": source, "id": self.wandb_run.id, "dir": str(self.wandb_run.dir), **place}
        )

    def finish(self, status: str, error: str | None = None) -> None:
        if not self.is_main:
            return
        self.update_manifest(
            status=status,
            ended_at=now(),
            wall_seconds=round(time.time() - self._t0, 2),
            **({"error": redact(error)} if error else {}),
        )
        if getattr(self, "metrics_file", None):
            self._flush_metrics()
            self.metrics_file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=0 if status == "completed" else 1)
            self.wandb_run = None

    # -- records ---------------------------------------------------------------------------------

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Send metrics to W&B and keep them for this step's line in metrics.jsonl.

        W&B merges every log of one step into one history row; metrics.jsonl does the same,
        writing a step's line as soon as a later step (or the end of the run) arrives.
        """
        if not self.is_main or not metrics:
            return
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._pending_step is not None and step != self._pending_step:
            self._flush_metrics()
        self._pending_step = step
        self._pending.update(clean)
        if self.wandb_run is not None:
            self.wandb_run.log(clean, step=step)
        if self.print_progress:
            print(self.progress_line(step, clean), flush=True)

    def begin_progress(self, total: int | None, step: int = 0, print_lines: bool | None = None) -> None:
        """Training starts (or resumes) at `step` of `total`: the rate and ETA of the progress lines count from now.
        `print_lines`: whether this tracker prints them (default: off a terminal, where no progress bar renders)."""
        self.total_steps, self._progress_from = total, (time.time(), step)
        if print_lines is not None:
            self.print_progress = print_lines

    def progress_line(self, step: int, metrics: dict[str, float]) -> str:
        t0, step0 = self._progress_from
        elapsed = time.time() - t0
        rate = (step - step0) / elapsed if step > step0 and elapsed > 0 else None
        return step_line(step, metrics, self.total_steps, rate)

    def flush(self) -> None:
        """Write the pending step's line now (checkpoints call this, so a resumed run loses no line)."""
        if self.is_main and getattr(self, "metrics_file", None):
            self._flush_metrics()

    def _flush_metrics(self) -> None:
        if self._pending_step is not None and self._pending:
            line = {"step": self._pending_step, **self._pending}
            if self._pending_step == self._written_step:  # more logs for a step already written: one line per step
                self.metrics_file.truncate(self._written_offset)
                line = {**self._written, **self._pending}
            else:
                self._written_offset = self.metrics_file.tell()
            self.metrics_file.write(json.dumps(line) + "\n")
            self.metrics_file.flush()
            self._written_step, self._written = self._pending_step, line
        self._pending_step, self._pending = None, {}

    def summary(self, values: dict[str, Any]) -> None:
        if self.is_main and self.wandb_run is not None:
            self.wandb_run.summary.update(redact(values))

    def update_manifest(self, **fields: Any) -> None:
        if not self.is_main:
            return
        self.manifest.update(redact(fields))
        self._write_manifest()

    def _write_manifest(self) -> None:
        write_json(self.run_dir / "manifest.json", self.manifest)


# ----------------------------------------------------------------------------------------------
# transformers Trainer -> Tracker


def metric_name(key: str) -> str:
    """Trainer log keys -> W&B names: `loss` -> `train/loss`, `eval_rewards/accuracies` -> `eval/rewards/accuracies`.

    The Trainer's end-of-run summary (`train_loss`, `train_runtime`, ...) goes under `train/summary/`
    so that it never collides with the per-step `train/loss`.
    """
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_") :]
    if key.startswith("train_"):
        return "train/summary/" + key[len("train_") :]
    return "train/" + key


def step_line(step: int, metrics: dict[str, float], total: int | None = None, rate: float | None = None, width: int = 6) -> str:
    """`step 10/60 | 2.5 it/s | ETA 0:20 | loss 0.6931 | rewards/margins 0.0123 ...`: progress, then the first
    `width` metrics of one logging step."""
    from workbench.console import progress_text

    shown = [f"{k.removeprefix('train/')} {v:.4g}" for k, v in list(metrics.items())[:width]]
    return " | ".join([progress_text(step, total, rate), *shown])


def trainer_callback(tracker: Tracker) -> Any:
    """A transformers TrainerCallback forwarding every log to the tracker."""
    from transformers import TrainerCallback

    class TrackingCallback(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # without the Trainer's bars (off a terminal, or turned off) the tracker prints each log as a progress line
            tracker.begin_progress(state.max_steps, state.global_step, print_lines=bool(args.disable_tqdm))

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if logs and state.is_world_process_zero:
                tracker.log({metric_name(k): v for k, v in logs.items()}, step=state.global_step)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            tracker.flush()

    return TrackingCallback()
