"""Dedup, deterministic split, mixture sampling, contamination check: small functions over rows.

Rows here are dicts holding at least `prompt`, `chosen`, `rejected` and `pair_id`.
Functions return what they removed so that nothing disappears without a record.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from workbench.data.schema import prompt_id, text_of

# ----------------------------------------------------------------------------------------------
# Duplicates


def exact_duplicates(rows: Sequence[dict[str, Any]]) -> dict[int, int]:
    """{index of a duplicate: index of the first row with the same pair id}."""
    first: dict[str, int] = {}
    dups = {}
    for i, row in enumerate(rows):
        pid = row["pair_id"]
        if pid in first:
            dups[i] = first[pid]
        else:
            first[pid] = i
    return dups


_WORD = re.compile(r"\w+", re.UNICODE)


def shingles(text: str, n: int = 3) -> set[str]:
    """Word n-grams of lower-cased text (the whole text when it has fewer than n words)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def pair_text(row: dict[str, Any]) -> str:
    return " \n ".join(text_of(row[k]) for k in ("prompt", "chosen", "rejected", "completion") if k in row)


def near_duplicates(rows: Sequence[dict[str, Any]], threshold: float, num_perm: int = 128, seed: int = 1) -> dict[int, int]:
    """{index of a near-duplicate: index of an earlier kept row it matches} by MinHash-LSH over word 3-grams.

    A candidate from LSH counts only if its estimated Jaccard similarity reaches `threshold`.
    """
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes: dict[int, Any] = {}
    dups = {}
    for i, row in enumerate(rows):
        mh = MinHash(num_perm=num_perm, seed=seed)
        for s in shingles(pair_text(row)):
            mh.update(s.encode("utf-8"))
        matches = [int(k) for k in lsh.query(mh) if hashes[int(k)].jaccard(mh) >= threshold]
        if matches:
            dups[i] = min(matches)
            continue
        hashes[i] = mh
        lsh.insert(str(i), mh)
    return dups


# ----------------------------------------------------------------------------------------------
# Split


def unit_interval(hex_digest: str) -> float:
    """A hex hash -> a number in [0, 1), uniform for uniform hashes."""
    return int(hex_digest[:15], 16) / 16**15


def split_key(row: dict[str, Any], by: str) -> str:
    if by == "pair":
        return row.get("split_id") or row["pair_id"]  # split_id: the pair an unpaired (KTO) record came from
    return prompt_id(row["prompt"])


def is_eval(row: dict[str, Any], eval_split: float, by: str) -> bool:
    """Deterministic split: the same pair (or prompt) lands in the same split whatever the order."""
    return unit_interval(split_key(row, by)) < eval_split


# ----------------------------------------------------------------------------------------------
# Mixture


def mixture_indices(n: int, weight: float, rng: random.Random) -> list[int]:
    """Indices of `n` rows to use under `weight`: whole repeats for the integer part, a sample for the rest."""
    whole, frac = int(weight), weight - int(weight)
    picked = list(range(n)) * whole
    picked += sorted(rng.sample(range(n), round(frac * n)))
    return picked


# ----------------------------------------------------------------------------------------------
# Checks and statistics


def contamination(train: Sequence[dict[str, Any]], eval_rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many eval pairs (or their prompts) also appear in train."""
    train_pairs = {r["pair_id"] for r in train}
    train_prompts = {prompt_id(r["prompt"]) for r in train}
    return {
        "eval_pairs_in_train": sum(r["pair_id"] in train_pairs for r in eval_rows),
        "eval_prompts_in_train": sum(prompt_id(r["prompt"]) in train_prompts for r in eval_rows),
    }


def length_bias(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How often the chosen response is longer (characters): a reward model can learn length alone."""
    if not rows:
        return {"pairs": 0, "chosen_longer": 0, "rejected_longer": 0, "equal": 0, "chosen_longer_share": None}
    diffs = [len(text_of(r["chosen"])) - len(text_of(r["rejected"])) for r in rows]
    longer = sum(d > 0 for d in diffs)
    shorter = sum(d < 0 for d in diffs)
    return {
        "pairs": len(rows),
        "chosen_longer": longer,
        "rejected_longer": shorter,
        "equal": len(rows) - longer - shorter,
        "chosen_longer_share": round(longer / len(rows), 4),
    }


def count_reasons(reasons: Sequence[str]) -> dict[str, int]:
    return dict(Counter(reasons).most_common())
