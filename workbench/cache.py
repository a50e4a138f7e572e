"""A content-addressed cache shared by runs ($WORKBENCH_CACHE, default ~/.cache/workbench).

Datasets stored here keep the same fingerprint from run to run, so per-dataset work keyed on
that fingerprint (TRL's precomputed reference log-probs) is computed once and reused: a beta or
loss-type sweep over the same data and reference model does no reference forward pass again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import uuid
from collections.abc import Callable
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


# ----------------------------------------------------------------------------------------------
# Memoised verdicts of pure, import-heavy checks (validate's TRL config build, the memory plan)

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "datasets")


@functools.cache
def environment_key() -> str:
    """What a memoised check's answer may depend on besides its own inputs: the installed library
    versions, the workbench's own source, and this machine's GPUs (device files and the visible-devices
    variables; no torch import). Any change to them is a different key, so a stale answer is never read."""
    from importlib import metadata

    digest = hashlib.sha256()
    for name in LIBRARIES:
        try:
            digest.update(f"{name}={metadata.version(name)};".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=none;".encode())
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(str(source.relative_to(package)).encode())
        digest.update(source.read_bytes())
    gpus = sorted(str(p) for pattern in ("nvidia*", "kfd", "dri/renderD*") for p in Path("/dev").glob(pattern))
    visible = [os.environ.get(v, "") for v in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")]
    digest.update(json.dumps([platform.node(), gpus, visible, sys.version]).encode())
    return digest.hexdigest()


def memo_json(namespace: str, key: Any, compute: Callable[[], Any]) -> Any:
    """compute()'s JSON value, stored under namespace/ by a hash of `key` and `environment_key()`.

    For checks whose answer is a pure function of their inputs but which cost seconds of imports
    (`validate` building TRL's config object). An unreadable entry is recomputed; a value that does
    not survive a JSON round trip unchanged is returned but not stored; a cache that cannot be
    written only costs the speed-up; inputs holding a secret-named key with a value are never stored.
    WORKBENCH_NO_MEMO=1 turns it off.
    """
    if os.environ.get("WORKBENCH_NO_MEMO") or holds_secret(key):
        return compute()  # an answer may quote its inputs: one holding a token never goes to disk
    name = hashlib.sha256(json.dumps([key, environment_key()], sort_keys=True, default=repr).encode()).hexdigest()
    path = cache_root() / namespace / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = compute()
    try:
        text = json.dumps({"value": value})
        if json.loads(text)["value"] != value:
            return value
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except (OSError, TypeError, ValueError):
        pass
    return value


def holds_secret(value: Any) -> bool:
    """True when a mapping anywhere in `value` gives a secret-named key (token, password, ...) a value."""
    from workbench.secrets import is_secret_name

    if isinstance(value, dict):
        return any((is_secret_name(str(k)) and v not in (None, "")) or holds_secret(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(holds_secret(v) for v in value)
    return False


def path_fingerprint(path: str | Path) -> str | None:
    """Content of a local file (or a directory's files, by name, size and mtime); None for hub ids and missing paths."""
    from workbench.data.schema import stable_hash

    p = Path(path)
    if p.is_file():
        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()[:16]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return stable_hash([[str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns] for f in files])[:16]
    return None
