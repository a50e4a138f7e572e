"""Canonical records and their validation.

A preference record is {prompt, chosen, rejected}; a prompt-only record is {prompt}; an SFT
record is {prompt, completion}. Each field is either text (str) or conversational (a list of
{role, content} messages), the two forms TRL trainers accept. Records also carry provenance
(`source`, `line`) and a stable `pair_id` once normalized.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
# The fields of each record kind: preference pairs, SFT examples, prompts (generation).
KIND_FIELDS = {
    "preference": PREFERENCE_FIELDS,
    "sft": ("prompt", "completion"),
    "prompt": ("prompt",),
    "unpaired": ("prompt", "completion", "label"),  # KTO: one completion, desirable (True) or not
}

Message = dict[str, str]
Content = str | list[Message]


@dataclass(frozen=True)
class Reject:
    """A row that was not kept, with where it came from and why."""

    source: str
    line: int
    reason: str
    row: Any = None
    kind: str = "invalid"  # or "tie": annotators tied and the recipe drops ties (not an error)
    column: int | None = None  # where a line failed to parse (kept out of `reason`, which groups rows in the report)

    def location(self) -> str:
        return f"{self.source}:{self.line}" + (f":{self.column}" if self.column else "")

    def to_json(self) -> dict[str, Any]:
        out = {"source": self.source, "line": self.line, "reason": self.reason, "row": self.row}
        out = out if self.column is None else {**out, "column": self.column}
        return out if self.kind == "invalid" else {**out, "kind": self.kind}


def is_conversational(value: Any) -> bool:
    return isinstance(value, list)


def message_list_problem(value: list[Any], name: str) -> str | None:
    """Why `value` is not a well-formed message list, or None."""
    if not value:
        return f"field '{name}' is an empty message list"
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            return f"field '{name}' message {i} is not an object"
        if "role" not in msg or "content" not in msg:
            missing = "role" if "role" not in msg else "content"
            return f"field '{name}' message {i} lacks '{missing}'"
        if msg["role"] not in ROLES:
            return f"field '{name}' message {i} has unknown role {msg['role']!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(msg["content"], str):
            return f"field '{name}' message {i} content is not a string"
    return None


def field_problem(row: dict[str, Any], name: str) -> str | None:
    """Why field `name` of `row` is unusable, or None."""
    if name not in row:
        return f"missing field '{name}'"
    value = row[name]
    if value is None:
        return f"field '{name}' is null"
    if isinstance(value, list):
        return message_list_problem(value, name)
    if not isinstance(value, str):
        return f"field '{name}' is not a string or message list (got {type(value).__name__})"
    return None


def text_of(value: Content) -> str:
    """The plain text of a field: the string, or the messages' contents joined."""
    if isinstance(value, str):
        return value
    return "\n".join(m["content"] for m in value)


def preference_problem(row: dict[str, Any]) -> str | None:
    """Why a canonical preference row is invalid, or None. Empty responses are valid (warned)."""
    for name in PREFERENCE_FIELDS:
        problem = field_problem(row, name)
        if problem:
            return problem
    if not text_of(row["prompt"]).strip():
        return "empty prompt"
    if is_conversational(row["chosen"]) != is_conversational(row["rejected"]):
        return "chosen and rejected mix text and message-list forms"
    if normalize(row["chosen"]) == normalize(row["rejected"]):
        return "chosen identical to rejected"
    return None


def record_problem(row: dict[str, Any], kind: str) -> str | None:
    """Why a canonical record of `kind` is invalid, or None."""
    if kind == "preference":
        return preference_problem(row)
    for name in ("prompt", "completion") if kind == "unpaired" else KIND_FIELDS[kind]:
        problem = field_problem(row, name)
        if problem:
            return problem
    return None if text_of(row["prompt"]).strip() else "empty prompt"


def unpaired_label(value: Any) -> bool | str:
    """An unpaired record's label as a bool (true/false or 1/0), or why it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    return f"field 'label' must be true/false or 1/0, got {value!r}"


def empty_response_warning(row: dict[str, Any]) -> str | None:
    for name in ("chosen", "rejected", "completion"):
        if name in row and not text_of(row[name]).strip():
            return f"empty {name} response"
    return None


_WS = re.compile(r"\s+")


def normalize(value: Content) -> Any:
    """Whitespace-folded form used for ids and dedup (trailing/duplicate spaces never make pairs differ)."""
    if isinstance(value, str):
        return _WS.sub(" ", value).strip()
    if not isinstance(value, list):  # labels
        return value
    return [{"role": m["role"], "content": _WS.sub(" ", m["content"]).strip()} for m in value]


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def pair_id(row: dict[str, Any], fields: tuple[str, ...] = PREFERENCE_FIELDS) -> str:
    """Stable id of a record (a preference pair by default): a hash of its normalized fields,
    whatever file or order it came from."""
    return stable_hash([normalize(row[name]) for name in fields])[:32]


def prompt_id(prompt: Content) -> str:
    return stable_hash(normalize(prompt))[:32]


def as_messages(value: Content, role: str) -> list[Message]:
    """Text -> a one-message list with `role`; messages unchanged."""
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def to_conversational(row: dict[str, Any]) -> dict[str, Any]:
    """A record with every field as messages (prompt as user, responses as assistant)."""
    out = dict(row)
    for name in ("prompt", "chosen", "rejected", "completion"):
        if name in row:
            out[name] = as_messages(row[name], "user" if name == "prompt" else "assistant")
    return out
