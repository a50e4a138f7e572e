"""A content-addressed cache shared by runs ($WORKBENCH_CACHE, default ~/.cache/workbench).

Datasets stored here keep the same fingerprint from run to run, so per-dataset work keyed on
that fingerprint (TRL's precomputed reference log-probs) is computed once and reused: a beta or
loss-type sweep over the same data and reference model does no reference forward pass again.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    return Path(os.environ.get("WORKBENCH_CACHE", "~/.cache/workbench")).expanduser()


def persisted_dataset(build: Any, namespace: str, key: str, is_main: bool) -> Any:
    """`build()` saved once under namespace/key (written by the main process, atomically), loaded by all."""
    from accelerate import PartialState
    from datasets import load_from_disk

    path = cache_root() / namespace / key
    if is_main and not (path / "state.json").is_file():
        tmp = path.parent / f".{key}.{uuid.uuid4().hex}.tmp"
        build().save_to_disk(str(tmp))
        if (path / "state.json").is_file():  # another run won the race
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
    PartialState().wait_for_everyone()
    return load_from_disk(str(path))
