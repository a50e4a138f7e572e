"""The one place where chat templates are applied and text becomes token ids.

Every method gets its token ids from here, so a pair is tokenized and truncated the same way
whether it feeds DPO, a reward model or evaluation. Truncation keeps the END of long prompts
(the latest turns matter most) and the START of long responses, and is counted per split,
including the pairs whose truncation removed every token where chosen and rejected differ.
A long chat prompt loses its oldest turns whole (a system message stays), so what is left is
still a well-formed dialogue in the template; only a last user turn too long on its own is cut
mid-message (keeping a leading special token such as BOS).
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from workbench.data.schema import Content, Message


@dataclass(frozen=True)
class TokenizationSettings:
    max_length: int
    max_prompt_length: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_truncated: bool
    response_truncated: bool
    lost_difference: bool
    lengths: tuple[int, int, int]  # (prompt, chosen, rejected) tokens before truncation
    FIELDS = ("prompt", "chosen", "rejected")

    @property
    def truncated(self) -> bool:
        return self.prompt_truncated or self.response_truncated


@dataclass(frozen=True)
class TokenizedSFT:
    prompt_ids: list[int]
    completion_ids: list[int]
    prompt_truncated: bool
    response_truncated: bool
    lengths: tuple[int, int]  # (prompt, completion) tokens before truncation
    FIELDS = ("prompt", "completion")
    lost_difference = False

    @property
    def truncated(self) -> bool:
        return self.prompt_truncated or self.response_truncated


@dataclass(frozen=True)
class TokenizedPrompt:
    prompt_ids: list[int]
    prompt_truncated: bool
    lengths: tuple[int]
    FIELDS = ("prompt",)
    response_truncated = False
    lost_difference = False

    @property
    def truncated(self) -> bool:
        return self.prompt_truncated


PLAIN_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def render_plain(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """Messages -> text for tokenizers without a chat template (e.g. BERT-style reward models)."""
    text = "\n\n".join(f"{PLAIN_ROLE_NAMES.get(m['role'], m['role'])}: {m['content']}" for m in messages)
    return text + ("\n\nAssistant:" if add_generation_prompt else "")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _encode_text(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _encode_messages(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
    if has_chat_template(tokenizer):
        return list(
            tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
            )
        )
    return _encode_text(tokenizer, render_plain(messages, add_generation_prompt), special=True)


def prompt_ids(tokenizer: Any, prompt: Content) -> list[int]:
    """Token ids of a prompt, ready for generation (chat template with the generation prompt)."""
    if isinstance(prompt, list):
        return _encode_messages(tokenizer, prompt, add_generation_prompt=True)
    return _encode_text(tokenizer, prompt, special=True)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def completion_ids(tokenizer: Any, prompt: Content, prompt_tokens: list[int], completion: Content) -> tuple[int, list[int]]:
    """(how many prompt tokens the full sequence shares, the completion's token ids ending with EOS / end-of-turn).

    The full dialogue is tokenized as one sequence, so prompt[:shared] + completion equals its
    encoding exactly even where the prompt alone ends differently (e.g. a BERT [SEP]).
    """
    if isinstance(prompt, list):
        completion_msgs = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        full = _encode_messages(tokenizer, [*prompt, *completion_msgs], add_generation_prompt=False)
        if not has_chat_template(tokenizer) and tokenizer.eos_token_id is not None:
            full = full if full and full[-1] == tokenizer.eos_token_id else [*full, tokenizer.eos_token_id]
        shared = common_prefix_length(prompt_tokens, full)
        return shared, full[shared:]
    text = completion if isinstance(completion, str) else "\n".join(m["content"] for m in completion)
    ids = _encode_text(tokenizer, text, special=False)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return len(prompt_tokens), ids


def truncate_pair(
    prompt: list[int], chosen: list[int], rejected: list[int], settings: TokenizationSettings, keep_first: bool = False
) -> tuple[list[int], list[int], list[int], bool, bool]:
    """Fit prompt + each response into max_length: cut the prompt's start first, then the responses' ends.

    `keep_first` keeps a leading special token (BOS, or CLS that encoder classifiers read) when
    the prompt's start is cut. Returns (prompt, chosen, rejected, prompt_truncated, response_truncated).
    """
    longest = max(len(chosen), len(rejected))
    prompt_cut = response_cut = False
    if _cuts_prompt(len(prompt), longest, settings):
        head = prompt[:1] if keep_first else []
        prompt = head + prompt[len(prompt) - (settings.max_prompt_length - len(head)) :]
        prompt_cut = True
    room = settings.max_length - len(prompt)
    if longest > room:
        chosen, rejected = chosen[:room], rejected[:room]
        response_cut = True
    return prompt, chosen, rejected, prompt_cut, response_cut


def drop_oldest_turns(tokenizer: Any, prompt: Content, budget: int) -> list[Message] | None:
    """A chat prompt without its oldest turns, keeping as many as fit in `budget` tokens (a leading system
    message stays; what is left starts with a user turn). None for a text prompt, or when even the last
    user turn is too long (the caller then cuts tokens)."""
    if not isinstance(prompt, list):
        return None
    system = list(prompt[:1]) if prompt and prompt[0].get("role") == "system" else []
    turns = prompt[len(system) :]
    for k in range(1, len(turns)):
        if turns[k].get("role") == "user":
            shorter = [*system, *turns[k:]]
            if len(prompt_ids(tokenizer, shorter)) <= budget:
                return shorter
    return None


def _pair_ids(tokenizer: Any, prompt: Content, chosen: Content, rejected: Content) -> tuple[list[int], list[int], list[int]]:
    """Prompt, chosen and rejected ids; both responses follow the same prompt tokens."""
    p = prompt_ids(tokenizer, prompt)
    shared_c, c = completion_ids(tokenizer, prompt, p, chosen)
    shared_r, r = completion_ids(tokenizer, prompt, p, rejected)
    if shared_c != shared_r:
        c = p[shared_r:shared_c] + c if shared_c > shared_r else c
        r = p[shared_c:shared_r] + r if shared_r > shared_c else r
    return p[: min(shared_c, shared_r)], c, r


def _cuts_prompt(prompt_len: int, longest: int, settings: TokenizationSettings) -> bool:
    """Whether truncation cuts the prompt: the whole does not fit and the prompt is over its share."""
    return prompt_len + longest > settings.max_length and prompt_len > settings.max_prompt_length


def _keeps_first(tokenizer: Any, ids: list[int]) -> bool:
    return bool(ids) and ids[0] in set(tokenizer.all_special_ids)


def tokenize_pair(tokenizer: Any, row: dict[str, Any], settings: TokenizationSettings) -> TokenizedPair:
    """A preference row -> truncated token ids plus what truncation did to it."""
    p, c, r = _pair_ids(tokenizer, row["prompt"], row["chosen"], row["rejected"])
    lengths = (len(p), len(c), len(r))
    differed = c != r
    dropped = False
    if _cuts_prompt(len(p), max(len(c), len(r)), settings):
        shorter = drop_oldest_turns(tokenizer, row["prompt"], settings.max_prompt_length)
        if shorter is not None:
            p, c, r = _pair_ids(tokenizer, shorter, row["chosen"], row["rejected"])
            dropped = True
    p, c, r, prompt_cut, response_cut = truncate_pair(p, c, r, settings, _keeps_first(tokenizer, p))
    return TokenizedPair(p, c, r, prompt_cut or dropped, response_cut, differed and c == r, lengths)


def _sft_ids(tokenizer: Any, prompt: Content, completion: Content) -> tuple[list[int], list[int]]:
    p = prompt_ids(tokenizer, prompt)
    shared, c = completion_ids(tokenizer, prompt, p, completion)
    return p[:shared], c


def tokenize_sft(tokenizer: Any, row: dict[str, Any], settings: TokenizationSettings) -> TokenizedSFT:
    """A (prompt, completion) row -> truncated token ids, the same rules as for pairs."""
    p, c = _sft_ids(tokenizer, row["prompt"], row["completion"])
    lengths = (len(p), len(c))
    dropped = False
    if _cuts_prompt(len(p), len(c), settings):
        shorter = drop_oldest_turns(tokenizer, row["prompt"], settings.max_prompt_length)
        if shorter is not None:
            (p, c), dropped = _sft_ids(tokenizer, shorter, row["completion"]), True
    p, c, _, prompt_cut, response_cut = truncate_pair(p, c, [], settings, _keeps_first(tokenizer, p))
    return TokenizedSFT(p, c, prompt_cut or dropped, response_cut, lengths)


def tokenize_prompt(tokenizer: Any, prompt: Content, max_prompt_length: int) -> TokenizedPrompt:
    """Prompt ids for generation within `max_prompt_length`: the oldest turns dropped whole, else the last
    tokens kept (with a leading special token such as BOS)."""
    p = prompt_ids(tokenizer, prompt)
    if len(p) <= max_prompt_length:
        return TokenizedPrompt(p, False, (len(p),))
    shorter = drop_oldest_turns(tokenizer, prompt, max_prompt_length)
    if shorter is not None:
        return TokenizedPrompt(prompt_ids(tokenizer, shorter), True, (len(p),))
    head = p[:1] if _keeps_first(tokenizer, p) else []
    return TokenizedPrompt(head + p[len(p) - (max_prompt_length - len(head)) :], True, (len(p),))


def tokenize_rows(
    tokenizer: Any, rows: Sequence[dict[str, Any]], settings: TokenizationSettings, kind: str = "preference"
) -> list[Any]:
    """Tokenize records of one kind: preference -> TokenizedPair, sft -> TokenizedSFT, prompt -> TokenizedPrompt."""
    if kind in ("sft", "unpaired"):
        return [tokenize_sft(tokenizer, row, settings) for row in rows]
    if kind == "prompt":
        return [tokenize_prompt(tokenizer, row["prompt"], settings.max_prompt_length) for row in rows]
    return [tokenize_pair(tokenizer, row, settings) for row in rows]


def length_stats(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "count": len(values),
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 2),
        "p50": pct(0.5),
        "p95": pct(0.95),
        "max": ordered[-1],
    }


def truncation_report(pairs: Sequence[Any]) -> dict[str, Any]:
    """Per-split counts of truncation, and of pairs truncation made useless (chosen == rejected)."""
    return {
        "pairs": len(pairs),
        "truncated": sum(p.truncated for p in pairs),
        "prompt_truncated": sum(p.prompt_truncated for p in pairs),
        "response_truncated": sum(p.response_truncated for p in pairs),
        "lost_difference": sum(p.lost_difference for p in pairs),
    }


def token_length_report(records: Sequence[Any]) -> dict[str, Any]:
    """Token length statistics before truncation per field, and for pairs the token-level length bias."""
    if not records:
        return {}
    fields = records[0].FIELDS
    out: dict[str, Any] = {name: length_stats([r.lengths[i] for r in records]) for i, name in enumerate(fields)}
    if fields == TokenizedPair.FIELDS:
        out["chosen_longer_share"] = round(sum(r.lengths[1] > r.lengths[2] for r in records) / len(records), 4)
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Changes whenever tokenization could change: vocabulary, merges, special tokens, chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    h.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    return h.hexdigest()[:16]


def describe_pair(tokenizer: Any, pair: TokenizedPair) -> str:
    """Human-readable view of one tokenized pair: what the model sees and which tokens carry the loss."""

    def span(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False)

    lines = [
        f"prompt   ({len(pair.prompt_ids)} tokens, no loss{', start cut' if pair.prompt_truncated else ''}): {span(pair.prompt_ids)!r}",
        f"chosen   ({len(pair.chosen_ids)} tokens, in loss{', end cut' if pair.response_truncated else ''}): {span(pair.chosen_ids)!r}",
        f"rejected ({len(pair.rejected_ids)} tokens, in loss{', end cut' if pair.response_truncated else ''}): {span(pair.rejected_ids)!r}",
        "loss mask (chosen sequence): " + "".join("0" for _ in pair.prompt_ids) + "".join("1" for _ in pair.chosen_ids),
        f"before truncation: prompt {pair.lengths[0]}, chosen {pair.lengths[1]}, rejected {pair.lengths[2]} tokens",
    ]
    if pair.lost_difference:
        lines.append("WARNING: truncation removed every token where chosen and rejected differ")
    return "\n".join(lines)
