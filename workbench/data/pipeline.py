"""Recipe `data:` section -> validated, deduplicated, split, mixed preference data plus its report.

This is the only way methods get data: `prepare(recipe, tokenizer)` then `save(...)` into the
run directory. Every row read ends up in exactly one place: train, eval, rejects or duplicates.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config import DataConfig, effective_max_prompt_length
from workbench.data import quality
from workbench.data.formatting import (
    TokenizationSettings,
    TokenizedPair,
    token_length_report,
    tokenize_rows,
    tokenizer_fingerprint,
    truncation_report,
)
from workbench.data.schema import KIND_FIELDS, Reject, empty_response_warning, pair_id, stable_hash, to_conversational
from workbench.data.sources import Loaded, load_source
from workbench.errors import DataError

PROVENANCE = ("pair_id", "source", "line")


@dataclass
class Prepared:
    kind: str
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    rejects: list[Reject]
    duplicates: list[dict[str, Any]]
    report: dict[str, Any]
    tokenized: dict[str, list[TokenizedPair]] = field(default_factory=dict)
    settings: TokenizationSettings | None = None


def tokenization_settings(data: DataConfig) -> TokenizationSettings:
    return TokenizationSettings(max_length=data.max_length, max_prompt_length=effective_max_prompt_length(data))


def read_sources(data: DataConfig, kind: str = "preference") -> tuple[list[Loaded], list[Reject], list[dict[str, Any]]]:
    """Every row of every source, as kept rows and rejects, plus per-source counts."""
    loaded: list[Loaded] = []
    rejects: list[Reject] = []
    per_source = []
    for index, src in enumerate(data.sources):
        kept = bad = 0
        for item in load_source(src, index, kind):
            if isinstance(item, Reject):
                rejects.append(item)
                bad += 1
            else:
                loaded.append(item)
                kept += 1
        label = src.path if src.path is not None else f"synthetic:{src.synthetic.task}"  # type: ignore[union-attr]
        per_source.append({"source": label, "rows_read": kept + bad, "valid": kept, "invalid": bad, "weight": src.weight})
    return loaded, rejects, per_source


def label_report(loaded: list[Loaded], rejects: list[Reject]) -> dict[str, int]:
    """Agreement of several annotators' labels: rows unanimous, decided by majority, tied (and dropped)."""
    agreement = Counter(item.row.get("_agreement") for item in loaded if "_agreement" in item.row)
    ties = [r for r in rejects if r.reason.startswith("annotators tie")]
    if not agreement and not ties:
        return {}
    return {
        "annotated": sum(agreement.values()) + len(ties),
        "unanimous": agreement["unanimous"],
        "majority": agreement["majority"],
        "ties": len(ties),
        "ties_dropped": sum(r.kind == "tie" for r in ties),
    }


def raise_for_rejects(rejects: list[Reject]) -> None:
    if not rejects:
        return
    first = rejects[0]
    more = len(rejects) - 1
    tail = f" ({more} more invalid row{'s' if more != 1 else ''} follow)" if more else ""
    raise DataError(
        f"{first.location()}: {first.reason}{tail}. Fix the data, or set `data.on_invalid: drop` "
        "to keep the good rows and write the bad ones to OUTPUT_DIR/data/rejects.jsonl."
    )


def to_rows(loaded: list[Loaded], kind: str) -> list[dict[str, Any]]:
    rows = [{**item.row, "source": item.source, "line": item.line, "_src": item.source_index} for item in loaded]
    if len({isinstance(r["prompt"], list) for r in rows}) > 1:  # one column type per field
        rows = [to_conversational(r) for r in rows]
    for r in rows:
        r["pair_id"] = pair_id(r, KIND_FIELDS[kind])
    return rows


def remove_duplicates(rows: list[dict[str, Any]], data: DataConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows kept, and a record per duplicate naming the row it duplicates."""
    if data.dedup == "none":
        return rows, []
    found = {i: (j, "exact") for i, j in quality.exact_duplicates(rows).items()}
    if data.dedup == "near":
        rest = [i for i in range(len(rows)) if i not in found]
        near = quality.near_duplicates([rows[i] for i in rest], data.near_dup_threshold)
        found.update({rest[i]: (rest[j], "near") for i, j in near.items()})
    dup_records = [
        {
            "source": rows[i]["source"],
            "line": rows[i]["line"],
            "pair_id": rows[i]["pair_id"],
            "kind": kind,
            "duplicate_of": {"source": rows[j]["source"], "line": rows[j]["line"], "pair_id": rows[j]["pair_id"]},
        }
        for i, (j, kind) in sorted(found.items())
    ]
    return [r for i, r in enumerate(rows) if i not in found], dup_records


def apply_mixture(train: list[dict[str, Any]], data: DataConfig, seed: int) -> list[dict[str, Any]]:
    """Sample each source's training rows by its weight (seeded); eval rows are never resampled."""
    if all(src.weight == 1.0 for src in data.sources):
        return train
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for index, src in enumerate(data.sources):
        own = [r for r in train if r["_src"] == index]
        out.extend(own[i] for i in quality.mixture_indices(len(own), src.weight, rng))
    return out


def margin_column(rows: list[dict[str, Any]]) -> bool:
    """Whether every row carries a `margin`; a partial column is an error, not a silent default."""
    with_margin = sum("margin" in r for r in rows)
    if 0 < with_margin < len(rows):
        example = next(r for r in rows if "margin" not in r)
        raise DataError(
            f"{with_margin} of {len(rows)} pairs have a 'margin' but {example['source']}:{example['line']} has none; "
            "give every pair a margin or none"
        )
    return with_margin > 0


def prepare(data: DataConfig, seed: int, tokenizer: Any = None, kind: str = "preference") -> Prepared:
    """Run the whole data layer for records of `kind` (preference, sft, prompt).

    Raises DataError for bad rows when `on_invalid: error`.
    """
    loaded, rejects, per_source = read_sources(data, kind)
    if data.on_invalid == "error":
        raise_for_rejects([r for r in rejects if r.kind != "tie"])  # ties the recipe drops are not errors
    labels = label_report(loaded, rejects)
    rows = to_rows(loaded, kind)
    warnings = Counter(w for w in (empty_response_warning(r) for r in rows) if w)
    rows, duplicates = remove_duplicates(rows, data)
    in_eval = [quality.is_eval(r, data.eval_split, data.split_by) for r in rows]
    eval_rows = [r for r, e in zip(rows, in_eval) if e]
    train_rows = [r for r, e in zip(rows, in_eval) if not e]
    for entry, index in zip(per_source, range(len(data.sources))):
        entry["train"] = sum(r["_src"] == index for r in train_rows)
        entry["eval"] = sum(r["_src"] == index for r in eval_rows)
    train_rows = apply_mixture(train_rows, data, seed)
    for entry, index in zip(per_source, range(len(data.sources))):
        entry["train_after_mixture"] = sum(r["_src"] == index for r in train_rows)
    if not train_rows:
        raise DataError("no training rows left after validation, dedup and split; check `data.sources` and `data.eval_split`")
    if data.eval_split > 0 and not eval_rows:
        warnings[f"eval split is empty: {len(rows)} rows x eval_split {data.eval_split} left none for evaluation"] += 1
    columns = KIND_FIELDS[kind] + PROVENANCE + (("margin",) if margin_column(rows) else ())
    train = [{k: r[k] for k in columns} for r in train_rows]
    evals = [{k: r[k] for k in columns} for r in eval_rows]
    report = build_report(data, per_source, rejects, duplicates, warnings, train, evals, kind)
    if labels:
        report["labels"] = labels
    prepared = Prepared(kind, train, evals, rejects, duplicates, report)
    if tokenizer is not None:
        add_token_report(prepared, tokenizer, tokenization_settings(data))
    return prepared


def build_report(
    data: DataConfig,
    per_source: list[dict[str, Any]],
    rejects: list[Reject],
    duplicates: list[dict[str, Any]],
    warnings: Counter,
    train: list[dict[str, Any]],
    evals: list[dict[str, Any]],
    kind: str = "preference",
) -> dict[str, Any]:
    rows_read = sum(s["rows_read"] for s in per_source)
    dropped = len(rejects) if data.on_invalid == "drop" else sum(r.kind == "tie" for r in rejects)
    train_fp = stable_hash([r["pair_id"] for r in train])
    eval_fp = stable_hash([r["pair_id"] for r in evals])
    report = {
        "kind": kind,
        "sources": per_source,
        "rows_read": rows_read,
        "kept": rows_read - dropped - len(duplicates),
        "dropped": {"total": dropped, "by_reason": quality.count_reasons([r.reason for r in rejects])},
        "warnings": dict(warnings),
        "duplicates": {
            "mode": data.dedup,
            "removed": len(duplicates),
            "exact": sum(d["kind"] == "exact" for d in duplicates),
            "near": sum(d["kind"] == "near" for d in duplicates),
        },
        "split": {"by": data.split_by, "eval_split": data.eval_split, "train": len(train), "eval": len(evals)},
        "contamination": quality.contamination(train, evals),
        "fingerprints": {"train": train_fp[:16], "eval": eval_fp[:16], "data": stable_hash([train_fp, eval_fp])[:16]},
    }
    if kind == "preference":
        report["length_bias"] = {"train": quality.length_bias(train), "eval": quality.length_bias(evals)}
    return report


def add_token_report(prepared: Prepared, tokenizer: Any, settings: TokenizationSettings) -> None:
    """Tokenize both splits once (methods reuse it) and add token lengths and truncation to the report."""
    prepared.settings = settings
    prepared.tokenized = {
        "train": tokenize_rows(tokenizer, prepared.train, settings, prepared.kind),
        "eval": tokenize_rows(tokenizer, prepared.eval, settings, prepared.kind),
    }
    prepared.report["tokenization"] = {**settings.to_dict(), "tokenizer": tokenizer_fingerprint(tokenizer)}
    prepared.report["tokens"] = {name: token_length_report(p) for name, p in prepared.tokenized.items()}
    prepared.report["truncation"] = {name: truncation_report(p) for name, p in prepared.tokenized.items()}


# ----------------------------------------------------------------------------------------------
# Writing


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a JSONL file (a line cut by a kill is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when it is missing or unreadable (a run that never got that far)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """All rows at once, atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)


def save(prepared: Prepared, output_dir: str | Path) -> Path:
    """Write data/train, data/eval (save_to_disk), rejects.jsonl, duplicates.jsonl and data_report.json."""
    from datasets import Dataset

    out = Path(output_dir)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    train = Dataset.from_list(prepared.train)
    # An empty split keeps the train columns and one (empty) shard: with none, load_from_disk fails.
    evals = Dataset.from_list(prepared.eval) if prepared.eval else train.select([])
    for name, dataset in (("train", train), ("eval", evals)):
        dataset.save_to_disk(str(data_dir / name), num_shards=1 if len(dataset) == 0 else None)
    for name, records in (("rejects.jsonl", [r.to_json() for r in prepared.rejects]), ("duplicates.jsonl", prepared.duplicates)):
        if records:
            write_jsonl(data_dir / name, records)
        elif (data_dir / name).exists():
            (data_dir / name).unlink()
    write_json(out / "data_report.json", prepared.report)
    return data_dir


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
