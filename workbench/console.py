"""What a run prints: third-party noise a user cannot act on is stopped at its source, every remaining warning
is shown once per process, and off a terminal progress is a line per logging step (step/total, rate, ETA).

Imports nothing heavy: the CLI calls `quiet_third_party()` before any ML library is loaded.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

# Emitted by TRL's own calls into transformers (trl.models.utils), at every checkpoint and evaluation;
# no setting of ours reaches those calls. The options we set ourselves use the current names instead.
DEPRECATED_BY_LIBRARIES = r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated and will be removed in v6"
# DeepSpeed's own call of a torch collective that torch deprecated (ZeRO gathers), once per process.
DEPRECATED_IN_DEEPSPEED = r"`torch\.distributed\.all_gather_into_tensor` is deprecated"
# DeepSpeed's guess on a machine without a GPU, logged at import by every process (it then uses the CPU, as we do).
DEEPSPEED_GUESS = "Setting accelerator to CPU"

_installed = False


def quiet_third_party() -> None:
    """Once per process: progress bars only where they render (a terminal), the filters above, and each warning
    shown once. A variable the user set in the environment is kept."""
    global _installed
    bars_off(sys.stderr.isatty())
    if _installed:
        return
    _installed = True
    for message in (DEPRECATED_BY_LIBRARIES, DEPRECATED_IN_DEEPSPEED):
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    logging.getLogger("DeepSpeed").addFilter(DropMessage(DEEPSPEED_GUESS))
    warnings.showwarning = ShowOnce(warnings.showwarning)


def bars_off(tty: bool) -> None:
    """Saving the prepared splits is not a wait worth a bar; off a terminal no bar renders (every redraw becomes
    text in the log), so transformers' and the hub's go too. Libraries imported already are told directly."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if not tty:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules and _truthy("HF_DATASETS_DISABLE_PROGRESS_BARS"):
        sys.modules["datasets"].disable_progress_bars()
    if _truthy("HF_HUB_DISABLE_PROGRESS_BARS"):
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class DropMessage(logging.Filter):
    """Drops log records whose message starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


class ShowOnce:
    """A `warnings.showwarning` that shows each (category, message) once per process. Python's own "once per
    location" forgets what it showed whenever any library touches the warning filters (catch_warnings does)."""

    def __init__(self, show: Any):
        self.show = show
        self.seen: set[tuple[type, str]] = set()

    def __call__(self, message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        key = (category, str(message))
        if key in self.seen:
            return
        self.seen.add(key)
        self.show(message, category, *args, **kwargs)


# ----------------------------------------------------------------------------------------------
# progress


def duration(seconds: float) -> str:
    """0:07, 3:05, 1:02:03: short enough for a progress line."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_text(step: int, total: int | None, rate: float | None) -> str:
    """`step 40/120 | 2.31 it/s | ETA 0:35`; the rate is in steps per second (shown as s/it below one), the ETA
    is the remaining steps at that rate. Parts that are not known yet are left out."""
    parts = [f"step {step}" + (f"/{total}" if total and total > 0 else "")]
    if rate is not None and rate > 0:
        parts.append(f"{rate:.3g} it/s" if rate >= 1 else f"{1 / rate:.3g} s/it")
        if total and total > 0:
            parts.append(f"ETA {duration(max(total - step, 0) / rate)}")
    return " | ".join(parts)
