"""Padding-free forward passes: a right-padded batch is packed into rows of whole sequences with
position ids restarting at 0 per sequence, run, and its per-token outputs are put back in the padded
layout, so trainers written for padded batches (TRL's DPO loss and metrics) run unchanged.

With no attention mask and no cache, transformers (masking_utils.find_packed_sequence_indices) reads the restarts
in `position_ids` as sequence boundaries: sdpa/eager get an exact block-diagonal causal mask, flash
attention gets varlen `cu_seqlens`. So a sequence sees exactly what it sees in the padded batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

IGNORE = -100


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Sequence indices per row, first-fit by decreasing length, each row's total <= capacity
    (a sequence longer than capacity gets a row of its own). Deterministic: ties keep index order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


@dataclass
class PackedLayout:
    """Where each real token of a right-padded (B, L) batch sits in the packed (R, C) one."""

    batch: int  # B
    width: int  # L
    rows: int  # R
    row_width: int  # C
    padded_index: Any  # (N,) flat index into (B, L) of every real token
    packed_index: Any  # (N,) flat index into (R, C) of the same token
    padded_shift_index: Any  # (M,) flat index into (B, L - 1) of every next-token prediction inside a sequence
    packed_shift_index: Any  # (M,) flat index into (R, C - 1) of the same prediction
    starts: Any  # (S,) flat index into (R, C) of each sequence's first token
    position_ids: Any  # (R, C): 0, 1, ... per sequence; row tails restart at 0 too (a segment of their own)


def plan_layout(lengths: Sequence[int], width: int, capacity: int, device: Any = None) -> PackedLayout:
    """The packed layout of sequences of `lengths` right-padded to `width`, rows of at most `capacity`."""
    import torch

    rows = pack_rows(lengths, capacity)
    row_width = max(max(sum(lengths[i] for i in row) for row in rows), 1)
    padded, packed, padded_shift, packed_shift, starts = [], [], [], [], []
    position_ids = torch.zeros(len(rows), row_width, dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            n = lengths[i]
            padded.extend(range(i * width, i * width + n))
            packed.extend(range(r * row_width + offset, r * row_width + offset + n))
            padded_shift.extend(range(i * (width - 1), i * (width - 1) + n - 1))
            packed_shift.extend(range(r * (row_width - 1) + offset, r * (row_width - 1) + offset + n - 1))
            starts.append(r * row_width + offset)
            position_ids[r, offset : offset + n] = torch.arange(n)
            offset += n
        position_ids[r, offset:] = torch.arange(row_width - offset)

    def t(x: list[int]) -> Any:
        return torch.tensor(x, dtype=torch.long, device=device)

    return PackedLayout(
        batch=len(lengths),
        width=width,
        rows=len(rows),
        row_width=row_width,
        padded_index=t(padded),
        packed_index=t(packed),
        padded_shift_index=t(padded_shift),
        packed_shift_index=t(packed_shift),
        starts=t(starts),
        position_ids=position_ids.to(device),
    )


def pack(x: Any, layout: PackedLayout, fill: Any) -> Any:
    """(B, L, ...) right-padded -> (R, C, ...) packed; positions holding no token get `fill`."""
    tail = x.shape[2:]
    out = x.new_full((layout.rows * layout.row_width, *tail), fill)
    out[layout.packed_index] = x.reshape(-1, *tail)[layout.padded_index]
    return out.view(layout.rows, layout.row_width, *tail)


def unpack(y: Any, layout: PackedLayout, shifted: bool) -> Any:
    """(R, C, ...) -> (B, L, ...), or with `shifted` (R, C - 1, ...) next-token outputs -> (B, L - 1, ...);
    positions outside a sequence are zero (False), as a padded forward gives where labels are ignored."""
    tail = y.shape[2:]
    width, row_width = (layout.width - 1, layout.row_width - 1) if shifted else (layout.width, layout.row_width)
    src, dst = (layout.packed_shift_index, layout.padded_shift_index) if shifted else (layout.packed_index, layout.padded_index)
    out = y.new_zeros((layout.batch * width, *tail))
    out = out.index_put((dst,), y.reshape(row_width * layout.rows, *tail)[src])  # out of place: keeps autograd simple
    return out.view(layout.batch, width, *tail)


def right_padded_lengths(attention_mask: Any) -> list[int] | None:
    """Row lengths when every row is 1...1 0...0 (right padding), else None (left padding: not packed)."""
    import torch

    lengths = attention_mask.sum(dim=1)
    expected = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None, :] < lengths[:, None]
    return lengths.tolist() if bool((attention_mask.bool() == expected).all()) else None


def pack_model_inputs(kwargs: dict[str, Any], capacity: int | None) -> tuple[dict[str, Any], PackedLayout] | None:
    """The packed version of a padded model call's kwargs (input_ids, attention_mask, labels), or None
    when there is nothing to pack. `capacity` None: one row (varlen attention kernels)."""
    mask = kwargs.get("attention_mask")
    ids = kwargs.get("input_ids")
    if (
        mask is None
        or ids is None
        or ids.dim() != 2
        or kwargs.get("position_ids") is not None
        or kwargs.get("inputs_embeds") is not None
    ):
        return None
    lengths = right_padded_lengths(mask)
    if lengths is None:
        return None
    width = ids.shape[1]
    layout = plan_layout(lengths, width, capacity or sum(lengths), device=ids.device)
    packed = {k: v for k, v in kwargs.items() if k not in ("attention_mask", "inputs_embeds")}
    packed["input_ids"] = pack(ids, layout, fill=0)
    packed["position_ids"] = layout.position_ids
    packed["use_cache"] = False  # with a cache, masking_utils does not look for packed sequences
    labels = kwargs.get("labels")
    if labels is not None:
        packed_labels = pack(labels, layout, fill=IGNORE).view(-1)
        packed_labels[layout.starts] = IGNORE  # a sequence's first token is never predicted (nor by its neighbour)
        packed["labels"] = packed_labels.view(layout.rows, layout.row_width)
    return packed, layout


def unpack_outputs(output: Any, layout: PackedLayout) -> Any:
    """Every per-token tensor of a model output, (R, C[-1], ...), put back as (B, L[-1], ...)."""
    import torch

    for key in list(output.keys()):
        value = output[key]
        if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[0] != layout.rows:
            continue
        if value.shape[1] == layout.row_width - 1:
            output[key] = unpack(value, layout, shifted=True)
        elif value.shape[1] == layout.row_width:
            output[key] = unpack(value, layout, shifted=False)
    return output


def row_capacity(model: Any, width: int) -> int | None:
    """Rows as wide as the padded batch for sdpa/eager (a dense block mask costs rows x width^2, never
    more than padding); one row for flash attention (varlen kernels cost only the real tokens)."""
    config = getattr(model, "config", None)
    impl = str(getattr(config, "_attn_implementation", "") or "")
    return None if "flash" in impl else width


@contextlib.contextmanager
def packed_calls(*modules: Any) -> Iterator[None]:
    """Within the block, calls of `modules` with a right-padded batch run packed and return padded-layout
    outputs. Nested hooked modules (a wrapper and its model) pack once, at the outermost call."""
    active: list[tuple[int, PackedLayout]] = []

    def before(module: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        if active or len(args) > 1 or "input_ids" in kwargs and args:
            return None
        if args:  # input_ids given positionally (a sequence-classification head calling its backbone)
            kwargs = {**kwargs, "input_ids": args[0]}
        ids = kwargs.get("input_ids")
        packed = pack_model_inputs(kwargs, row_capacity(module, ids.shape[1]) if ids is not None else None)
        if packed is None:
            return None
        active.append((id(module), packed[1]))
        return (), packed[0]

    def after(module: Any, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if not active or active[-1][0] != id(module):
            return None
        return unpack_outputs(output, active.pop()[1])

    handles = []
    seen: set[int] = set()
    for m in modules:
        if m is None or id(m) in seen:
            continue
        seen.add(id(m))
        handles.append(m.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(m.register_forward_hook(after, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        active.clear()


def backbone(model: Any) -> Any:
    """The transformer body under a task head (and a PEFT wrapper): packing it keeps the head's own
    pooling (a reward model's last-token score) on the padded layout."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, getattr(inner, "base_model_prefix", ""), inner)
