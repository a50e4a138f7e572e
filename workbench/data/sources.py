"""Loaders: files, saved datasets and hub ids -> raw rows with provenance -> canonical preference rows.

Each raw row keeps `source` and `line` (the 1-based line for line-oriented files, the row
number otherwise) so that every rejected row can be reported as `file:line`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.config import LabelSpec, SourceConfig, methods_where
from workbench.data import synthetic
from workbench.data.schema import (
    KIND_FIELDS,
    Content,
    Message,
    Reject,
    as_messages,
    pair_id,
    preference_problem,
    record_problem,
    unpaired_label,
)
from workbench.errors import DataError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass(frozen=True)
class RawRow:
    source: str
    line: int
    row: Any


# ----------------------------------------------------------------------------------------------
# Reading


def _base_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # type: ignore[return-value]


@contextlib.contextmanager
def _readable(label: str) -> Iterator[None]:
    """Turn a compressed file that ends early or is not gzip into one sentence naming the file."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{label}: the gzip file is truncated or corrupt ({exc}); download or compress it again") from None


def _decode(raw: bytes, label: str, number: int) -> str | Reject:
    """One line as text (a leading UTF-8 BOM dropped), or a Reject naming the line of undecodable bytes."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        return Reject(
            label,
            number,
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8",
            raw[:500].decode("utf-8", errors="replace"),
        )


def _decode_all(raw: bytes, label: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{label}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") from None


def read_jsonl(path: Path, label: str) -> Iterator[RawRow | Reject]:
    """Rows of a JSON Lines file, each line decoded on its own so a bad byte is reported by line."""
    with _readable(label), _open_binary(path) as fh:
        for number, raw in enumerate(fh, start=1):
            line = _decode(raw, label, number)
            if isinstance(line, Reject):
                yield line
                continue
            if not line.strip():
                continue  # blank lines are not rows
            text = line.rstrip("\r\n")  # parsed alone: the parser's position is the column in this line
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Reject(label, number, f"not valid JSON ({exc.msg})", text[:500], column=exc.pos + 1)
                continue
            if not isinstance(row, dict):
                yield Reject(label, number, f"not a JSON object (got {type(row).__name__})", row)
                continue
            yield RawRow(label, number, row)


def read_json(path: Path, label: str) -> Iterator[RawRow | Reject]:
    with _readable(label), _open_binary(path) as fh:
        text = _decode_all(fh.read(), label)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON Lines saved as .json
            yield from read_jsonl(path, label)
            return
        raise DataError(
            f"{label}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); fix the file or save it as JSON Lines"
        ) from None
    if isinstance(data, dict):
        rows = next((data[k] for k in ("data", "rows", "examples") if isinstance(data.get(k), list)), None)
        if rows is None:
            raise DataError(
                f"{label}: a .json file must hold a list of rows (or {{'data': [...]}}), got an object with keys {sorted(data)[:8]}"
            )
        data = rows
    if not isinstance(data, list):
        raise DataError(f"{label}: a .json file must hold a list of rows, got {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        if isinstance(row, dict):
            yield RawRow(label, number, row)
        else:
            yield Reject(label, number, f"not a JSON object (got {type(row).__name__})", row)


def _maybe_json_cell(value: Any) -> Any:
    """CSV cells holding message lists are JSON text."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def read_csv(path: Path, label: str) -> Iterator[RawRow | Reject]:
    with _readable(label), _open_binary(path) as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        try:
            for row in reader:
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue
                yield RawRow(label, reader.line_num, {k: _maybe_json_cell(v) for k, v in row.items()})
        except UnicodeDecodeError:
            raise DataError(f"{label}:{reader.line_num + 1}: not valid UTF-8; save the file as UTF-8") from None
        except csv.Error as exc:
            raise DataError(f"{label}:{reader.line_num}: not valid CSV ({exc})") from None


def read_parquet(path: Path, label: str) -> Iterator[RawRow | Reject]:
    import pyarrow.parquet as pq

    source: Any = path
    if path.name.lower().endswith(".gz"):
        with _readable(label), gzip.open(path, "rb") as fh:
            source = io.BytesIO(fh.read())
    try:
        batches = pq.ParquetFile(source).iter_batches(batch_size=1024)  # row groups in turn: bounded memory
        number = 0
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                yield RawRow(label, number, row)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError; a cut file an OSError
        raise DataError(f"{label}: not a readable parquet file ({' '.join(str(exc).split())[:200]})") from None


READERS: dict[str, Callable[[Path, str], Iterator[RawRow | Reject]]] = {
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".csv": read_csv,
    ".parquet": read_parquet,
}


def read_dataset_rows(dataset: Any, label: str) -> Iterator[RawRow]:
    for number, row in enumerate(dataset, start=1):
        yield RawRow(label, number, dict(row))


def read_saved(path: Path, split: str) -> Iterator[RawRow | Reject]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: saved DatasetDict has no split '{split}'; set `split:` to one of {sorted(ds)}")
        ds = ds[split]
    yield from read_dataset_rows(ds, str(path))


def read_hub(src: SourceConfig) -> Iterator[RawRow | Reject]:
    from datasets import load_dataset

    assert src.path is not None
    try:
        ds = load_dataset(src.path, src.name, data_dir=src.data_dir, split=src.split)
    except Exception as exc:  # the hub raises many types; all mean "cannot load this id"
        raise DataError(
            f"data source '{src.path}': not a local file or directory, and loading it as a hub dataset failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Check the path, or the id and network."
        ) from None
    folder = f"/{src.data_dir}" if src.data_dir else ""
    yield from read_dataset_rows(ds, f"{src.path}{folder}[{src.split}]")


def _not_empty(rows: Iterator[RawRow | Reject], label: str) -> Iterator[RawRow | Reject]:
    """A file that yields no row at all is an error naming it, not an empty dataset found much later."""
    empty = True
    for item in rows:
        empty = False
        yield item
    if empty:
        raise DataError(f"{label}: the file holds no rows; check the path, or remove the source")


def looks_like_local_path(text: str) -> bool:
    """Whether `text` can only mean a local path, so that a missing one is reported as such without asking the hub:
    it starts with . / ~, ends like a data file, has more '/' than a hub id (`name` or `owner/name`), or its first
    part is a local directory."""
    return (
        text.startswith((".", "/", "~"))
        or _base_suffix(Path(text)) in FILE_SUFFIXES
        or text.count("/") > 1
        or Path(text.split("/", 1)[0]).expanduser().is_dir()
    )


def iter_raw(src: SourceConfig) -> Iterator[RawRow | Reject]:
    """Raw rows (or rejects for unreadable lines) of one source, in file order."""
    if src.synthetic is not None:
        label = f"synthetic:{src.synthetic.task}"
        for number, row in enumerate(synthetic.generate(src.synthetic), start=1):
            yield RawRow(label, number, row)
        return
    assert src.path is not None
    path = Path(src.path).expanduser()
    if path.is_dir():
        yield from read_saved(path, src.split)
    elif path.is_file():
        reader = READERS.get(_base_suffix(path))
        if reader is None:
            raise DataError(f"{path}: unsupported file type; use .jsonl, .json, .parquet or .csv (optionally .gz)")
        yield from _not_empty(reader(path, str(src.path)), str(src.path))
    elif looks_like_local_path(src.path):
        raise DataError(f"data source '{src.path}' not found (relative paths are resolved from {Path.cwd()})")
    else:
        yield from read_hub(src)


# ----------------------------------------------------------------------------------------------
# Layouts -> canonical preference rows


HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """Split two HH-RLHF dialogues at the last Assistant marker inside their common prefix.

    Returns (shared dialogue ending with the marker, chosen tail, rejected tail), or None when
    the common prefix holds no Assistant marker. Exact even when a response contains markers.
    """
    limit = min(len(chosen), len(rejected))
    common = 0
    while common < limit and chosen[common] == rejected[common]:
        common += 1
    cut = chosen.rfind(ASSISTANT, 0, common)
    if cut < 0 or cut + len(ASSISTANT) > common:
        return None
    cut += len(ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def parse_hh_dialogue(text: str) -> list[Message]:
    """'\\n\\nHuman: a\\n\\nAssistant: b...' -> [{user: a}, {assistant: b}, ...] (stripped contents)."""
    messages: list[Message] = []
    pos = 0
    markers = ((HUMAN, "user"), (ASSISTANT, "assistant"))
    current: str | None = None
    start = 0
    while True:
        found = [(text.find(marker, pos), marker, role) for marker, role in markers]
        found = [f for f in found if f[0] >= 0]
        if not found:
            break
        index, marker, role = min(found)
        if current is not None:
            messages.append({"role": current, "content": text[start:index].strip()})
        elif text[:index].strip():
            messages.append({"role": "system", "content": text[:index].strip()})
        current, start = role, index + len(marker)
        pos = start
    if current is not None:
        messages.append({"role": current, "content": text[start:].strip()})
    return messages


def merge_consecutive_roles(messages: list[Message]) -> list[Message]:
    """Join back-to-back turns of one role (real HH dialogues have them; chat templates want alternation)."""
    merged: list[Message] = []
    for msg in messages:
        if merged and merged[-1]["role"] == msg["role"]:
            merged[-1] = {"role": msg["role"], "content": merged[-1]["content"] + "\n\n" + msg["content"]}
        else:
            merged.append(dict(msg))
    return merged


def hh_to_preference(row: dict[str, Any]) -> dict[str, Any] | str:
    for name in ("chosen", "rejected"):
        if not isinstance(row.get(name), str):
            return f"field '{name}' is missing or not a string (hh-rlhf rows hold whole dialogues)"
    chosen, rejected = row["chosen"], row["rejected"]
    if chosen.startswith("Human:"):
        chosen, rejected = "\n\n" + chosen, "\n\n" + rejected
    parts = split_hh_pair(chosen, rejected)
    if parts is None:
        return "hh-rlhf: chosen and rejected share no dialogue ending in '\\n\\nAssistant:'"
    shared, chosen_tail, rejected_tail = parts
    prompt = merge_consecutive_roles(parse_hh_dialogue(shared[: -len(ASSISTANT)]))
    if not prompt or prompt[-1]["role"] != "user":
        return "hh-rlhf: the shared dialogue does not end with a Human turn"
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen_tail.strip()}],
        "rejected": [{"role": "assistant", "content": rejected_tail.strip()}],
    }


def implicit_messages_to_preference(row: dict[str, Any]) -> dict[str, Any] | str:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        return "no 'prompt' field, and chosen/rejected are not message lists to take a shared prompt from"
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == len(chosen) and shared == len(rejected):
        return "chosen identical to rejected"
    return {**row, "prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


def _label_matches(value: Any, expected: Any) -> bool:
    """Label equality that never reads a JSON boolean as 1 / 0, and accepts CSV's text forms."""
    if isinstance(expected, bool) or isinstance(value, bool):
        if isinstance(value, str):
            value = {"true": True, "false": False}.get(value.strip().lower(), value)
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    return value == expected or str(value).strip() == str(expected).strip()


def majority_label(votes: list[Any], spec: LabelSpec) -> tuple[str, str]:
    """Several annotators' labels -> ("first" | "second" | "tie" | "invalid", agreement or reason).

    The side with a strict majority wins; no strict majority, or a majority for `tie_value`, is a tie.
    Missing (null) votes do not count.
    """
    counts = {"first": 0, "second": 0, "tie": 0}
    for vote in votes:
        if vote is None or vote == "":
            continue
        if _label_matches(vote, spec.first_value):
            counts["first"] += 1
        elif _label_matches(vote, spec.second_value):
            counts["second"] += 1
        elif spec.tie_value is not None and _label_matches(vote, spec.tie_value):
            counts["tie"] += 1
        else:
            return "invalid", _bad_label(vote, spec)
    cast = sum(counts.values())
    if cast == 0:
        return "invalid", "no annotator label"
    best = max(counts.values())
    winners = [side for side, n in counts.items() if n == best]
    if len(winners) > 1 or winners[0] == "tie":
        return "tie", f"annotators tie (labels {votes})"
    return winners[0], "unanimous" if best == cast else "majority"


def _bad_label(label: Any, spec: LabelSpec) -> str:
    if isinstance(label, bool) and not isinstance(spec.first_value, bool):
        return f"label {label!r} is a boolean; set `label.first_value` and `label.second_value` to true/false"
    if spec.tie_value is None:
        return f"label {label!r} is neither {spec.first_value!r} nor {spec.second_value!r}"
    return f"label {label!r} is none of {spec.first_value!r}, {spec.second_value!r}, {spec.tie_value!r} (tie)"


def missing_column(name: str, row: dict[str, Any], why: str = "") -> str:
    """A missing column named with the columns the row has, and the closest one as a `columns:` mapping."""
    from workbench.config import closest

    found = sorted(str(k) for k in row)
    others = [c for c in found if c != name]
    guess = closest(name, others) or next((c for c in others if name.lower() in c.lower()), None)
    hint = f"; did you mean '{guess}'? Map it with `columns: {{{name}: {guess}}}`" if guess else ""
    return f"missing field '{name}'{why} (columns found: {', '.join(found)}){hint}"


def labeled_to_preference(row: dict[str, Any], spec: LabelSpec) -> dict[str, Any] | str | Reject:
    labels = spec.label if isinstance(spec.label, list) else [spec.label]
    for column in (spec.prompt, spec.first, spec.second, *labels):
        if column not in row:
            return missing_column(column, row, " (labeled-pair spec)")
    side, detail = majority_label([row[c] for c in labels], spec)
    if side == "invalid":
        return detail
    if side == "tie":
        return Reject("", 0, detail, None, "tie" if spec.on_tie == "drop" else "invalid")
    chosen, rejected = (row[spec.first], row[spec.second]) if side == "first" else (row[spec.second], row[spec.first])
    out = {"prompt": row[spec.prompt], "chosen": chosen, "rejected": rejected}
    return {**out, "_agreement": detail} if len(labels) > 1 else out


def detect_format(row: dict[str, Any], src: SourceConfig) -> str:
    """Guess the layout from one row's columns."""
    spec = src.label or LabelSpec()
    keys = set(row)
    if {"prompt", "chosen", "rejected"} <= keys:
        return "preference"
    labels = spec.label if isinstance(spec.label, list) else [spec.label]
    if {spec.prompt, spec.first, spec.second, *labels} <= keys:
        return "labeled-pair"
    if {"chosen", "rejected"} <= keys:
        if isinstance(row["chosen"], list):
            return "conversational"
        if isinstance(row["chosen"], str) and row["chosen"].lstrip("\n").startswith("Human:"):
            return "hh-rlhf"
    if {"prompt", "completion", "label"} <= keys:
        return "unpaired"
    if {"prompt", "completion"} <= keys:
        return "sft"
    if "prompt" in keys:
        return "prompt"
    raise DataError(
        f"{src.path}: cannot tell the data layout from columns {sorted(keys)}; rename columns with "
        "`columns: {prompt: ..., chosen: ..., rejected: ...}` or set `format:` (preference, conversational, hh-rlhf, labeled-pair)"
    )


def rename_columns(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any] | str:
    out = dict(row)
    for canonical, column in columns.items():
        if column not in row:
            return missing_column(column, row, f" (mapped to '{canonical}' by `columns`)")
        out[canonical] = out.pop(column)
    return out


def to_preference(row: dict[str, Any], fmt: str, src: SourceConfig) -> dict[str, Any] | str | Reject:
    """One raw row -> a canonical preference row, or the reason it is invalid (a tie Reject for tied annotators)."""
    if fmt == "hh-rlhf":
        result = hh_to_preference(row)
    elif fmt == "labeled-pair":
        result = labeled_to_preference(row, src.label or LabelSpec())
    elif "prompt" not in row and fmt == "conversational":
        result = implicit_messages_to_preference(row)
    else:
        missing = next((k for k in ("prompt", "chosen", "rejected") if k not in row), None)
        if missing is not None:
            return missing_column(missing, row)
        result = {k: row.get(k) for k in ("prompt", "chosen", "rejected")}
    if isinstance(result, (str, Reject)):
        return result
    problem = preference_problem(result)
    if problem:
        return problem
    if fmt == "conversational" and not all(isinstance(result[k], list) for k in ("prompt", "chosen", "rejected")):
        return "format is conversational but a field is text, not a message list"
    out = {k: result[k] for k in ("prompt", "chosen", "rejected")}
    if "_agreement" in result:  # several annotators: unanimous or majority, counted in the data report
        out["_agreement"] = result["_agreement"]
    if row.get("margin") is not None:  # optional per-pair preference strength (reward models)
        margin = row["margin"]
        if isinstance(margin, bool) or not isinstance(margin, (int, float, str)):
            return f"field 'margin' is not a number (got {type(margin).__name__})"
        try:
            out["margin"] = float(margin)
        except ValueError:
            return f"field 'margin' is not a number (got {margin!r})"
        if out["margin"] != out["margin"] or abs(out["margin"]) == float("inf"):  # NaN/inf would poison the loss
            return f"field 'margin' is not finite (got {margin!r})"
    return out


@dataclass(frozen=True)
class Loaded:
    """A canonical row with its provenance."""

    source: str
    line: int
    row: dict[str, Any]
    source_index: int


def to_record(
    row: dict[str, Any], fmt: str, src: SourceConfig, kind: str
) -> dict[str, Any] | list[dict[str, Any]] | str | Reject:
    """One raw row -> a canonical record of `kind` (preference, sft, prompt or unpaired), or why it is invalid.

    Preference layouts also serve the other kinds: SFT takes (prompt, chosen), generation takes prompts,
    and `unpaired` (KTO) takes both responses as two records: chosen desirable, rejected undesirable.
    """
    if fmt in ("sft", "prompt", "unpaired"):
        needs = {"preference": "chosen/rejected", "sft": "completion", "unpaired": "completion and label"}
        if kind == "preference" or (kind != "prompt" and fmt == "prompt") or (kind == "unpaired" and fmt == "sft"):
            raise DataError(f"{src.path}: a `{fmt}` source has no {needs[kind]} for a {kind} method")
        if kind == "sft" and fmt == "unpaired":
            raise DataError(
                f"{src.path}: rows with a `label` are unpaired (KTO) data; set `format: sft` to fine-tune on every completion"
            )
        record = {name: row.get(name) for name in KIND_FIELDS[kind]}
        if kind == "unpaired":
            label = unpaired_label(row.get("label"))
            if isinstance(label, str):
                return label
            record["label"] = label
    else:
        pair = to_preference(row, fmt, src)
        if isinstance(pair, (str, Reject)) or kind == "preference":
            return pair
        if kind == "unpaired":  # both halves split with the pair's id, as DPO on the same data splits them
            split_id = pair_id(pair)
            return [
                {"prompt": pair["prompt"], "completion": pair["chosen"], "label": True, "split_id": split_id},
                {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False, "split_id": split_id},
            ]
        record = {"prompt": pair["prompt"], "completion": pair["chosen"]} if kind == "sft" else {"prompt": pair["prompt"]}
    return record_problem(record, kind) or record


def prompt_column(fmt: str, src: SourceConfig) -> str:
    return (src.label or LabelSpec()).prompt if fmt == "labeled-pair" else "prompt"


def apply_prompt_template(row: dict[str, Any], template: str, column: str) -> dict[str, Any] | str:
    """The row with `column` set to the template filled from the row's fields, or why it cannot be."""
    try:
        text = template.format_map(row)
    except KeyError as exc:
        found = ", ".join(sorted(str(k) for k in row))
        return f"`prompt_template` needs column '{exc.args[0]}', which the row lacks (columns: {found})"
    except (IndexError, ValueError) as exc:
        return f"`prompt_template` is not a valid format string ({exc}); use {{column}} fields"
    return {**row, column: text.strip()}


def with_system_prompt(prompt: Content, text: str) -> list[Message]:
    """The prompt as a chat opening with `text` as its system message (a system message it had is replaced)."""
    messages = as_messages(prompt, "user")
    if messages and messages[0].get("role") == "system":
        messages = messages[1:]
    return [{"role": "system", "content": text}, *messages]


def first_user_turn(prompt: Content) -> Content:
    """A chat prompt's system messages and its first user turn (a text prompt is a single turn already)."""
    if not isinstance(prompt, list):
        return prompt
    first = next((i for i, m in enumerate(prompt) if m.get("role") == "user"), None)
    if first is None:
        return prompt
    return [m for m in prompt[:first] if m.get("role") == "system"] + [prompt[first]]


def prompt_turns_problem(src: SourceConfig, source_index: int, kind: str) -> str | None:
    """`prompt_turns: first` cuts a dialogue before the turn its responses answer: usable for prompt records only."""
    if src.prompt_turns == "all" or kind == "prompt":
        return None
    return (
        f"`data.sources.{source_index}.prompt_turns: first` keeps a dialogue's first user turn only, but {kind} records "
        f"pair it with responses to its last turn; use it with a method that reads prompts ({', '.join(methods_where(data_kind='prompt'))}), "
        "or set prompt_turns: all"
    )


def load_source(src: SourceConfig, source_index: int, kind: str = "preference") -> Iterator[Loaded | Reject]:
    """Canonical records of one source, and a Reject for every row that cannot be used."""
    problem = prompt_turns_problem(src, source_index, kind)
    if problem:
        raise DataError(problem)
    fmt = None if src.format == "auto" else src.format
    for item in iter_raw(src):
        if isinstance(item, Reject):
            yield item
            continue
        row = rename_columns(item.row, src.columns) if src.columns else item.row
        if isinstance(row, str):
            yield Reject(item.source, item.line, row, item.row)
            continue
        if fmt is None:
            fmt = detect_format(row, src) if not src.prompt_template else detect_format({**row, "prompt": ""}, src)
        if src.prompt_template:
            row = apply_prompt_template(row, src.prompt_template, prompt_column(fmt, src))
            if isinstance(row, str):
                yield Reject(item.source, item.line, row, item.row)
                continue
        result = to_record(row, fmt, src, kind)
        if isinstance(result, Reject):
            yield Reject(item.source, item.line, result.reason, item.row, result.kind)
        elif isinstance(result, str):
            yield Reject(item.source, item.line, result, item.row)
        else:
            for record in result if isinstance(result, list) else [result]:
                if src.prompt_turns == "first":
                    record = {**record, "prompt": first_user_turn(record["prompt"])}
                if src.system_prompt is not None:
                    record = {**record, "prompt": with_system_prompt(record["prompt"], src.system_prompt)}
                yield Loaded(item.source, item.line, record, source_index)
