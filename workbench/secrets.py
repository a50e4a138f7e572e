"""Which names hold secrets, and how a command line is shown without them (light: imported by the CLI)."""

from __future__ import annotations

import re

REDACTED = "***REDACTED***"
SECRET_NAME = re.compile(r"(token|secret|passw|api_?key|_key$|^key$|credential|auth)", re.IGNORECASE)
# Names that match the pattern but hold no secret.
NOT_SECRET = {
    "pad_token",
    "eos_token",
    "bos_token",
    "unk_token",
    "sep_token",
    "cls_token",
    "mask_token",
    "max_new_tokens",
    "push_to_hub_token",
    "include_num_input_tokens_seen",
    "average_tokens_across_devices",
    "include_tokens_per_second",
    "sort_key",
    "key",
}


def is_secret_name(name: str) -> bool:
    """True for a field (or the last part of a dotted key) that holds a token, key or password."""
    leaf = name.rsplit(".", 1)[-1].lstrip("-")
    return bool(SECRET_NAME.search(leaf)) and leaf not in NOT_SECRET


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the values of secret-named `KEY=VALUE` items and `--secret-flag VALUE` pairs replaced."""
    out: list[str] = []
    for i, item in enumerate(argv):
        if "=" in item and is_secret_name(item.split("=", 1)[0]):
            out.append(item.split("=", 1)[0] + "=" + REDACTED)
        elif i > 0 and argv[i - 1].startswith("--") and "=" not in argv[i - 1] and is_secret_name(argv[i - 1].replace("-", "_")):
            out.append(REDACTED)
        else:
            out.append(item)
    return out


def refuse_secret_overrides(overrides: list[str]) -> None:
    """Secrets given with --set reach shell history, `ps`, logs and W&B's record of the command: refuse them."""
    from workbench.errors import WorkbenchError

    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if is_secret_name(key):
            raise WorkbenchError(
                f"--set {key}=...: secrets are not accepted on the command line (they would be written to shell "
                "history, process lists, logs and W&B); put it in the environment (HF_TOKEN, WANDB_API_KEY) "
                "or in the recipe file"
            )
