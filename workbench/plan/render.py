"""The plan as `workbench plan` prints it, and the one line `workbench validate` shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.plan.build import GiB, Plan, make_plan


def gib(x: float) -> str:
    return f"{x / GiB:.2f}"


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_plan(plan: Plan) -> str:
    """The per-device table (GiB), then activations, generation, total, CPU RAM and the fit verdict."""
    lines = [f"memory plan: {plan.method}, {plan.launch.describe()}", "per device (GiB):"]
    header = f"  {'role':<10} {'params':>9} {'trainable':>10} {'weights':>8} {'grads':>8} {'optim':>8} {'buffers':>8} {'total':>8}  {'CPU':>7}  dtype / note"
    lines.append(header)
    for m in plan.models:
        s = m.states
        lines.append(
            f"  {m.role:<10} {human_count(m.params):>9} {human_count(m.trainable_params):>10} {gib(s.params):>8} {gib(s.grads):>8} "
            f"{gib(s.optimizer):>8} {gib(s.buffers):>8} {gib(s.device):>8}  {gib(s.cpu):>7}  {m.weight_dtype}; {m.note or m.training}"
        )
    ck = "on" if plan.gradient_checkpointing else "off"
    lines.append(
        f"  activations ({plan.micro_batch_rows} rows x {plan.seq_len} tokens, checkpointing {ck}): {gib(plan.activations_bytes_per_device)}"
        f"  [without checkpointing {gib(plan.activations_without_checkpointing)}, with {gib(plan.activations_with_checkpointing)}]"
    )
    if plan.kv_cache_bytes_per_device:
        lines.append(
            f"  generation KV cache: {gib(plan.kv_cache_bytes_per_device)}"
            + (f", gathered/inference weights: {gib(plan.generation_gather_bytes)}" if plan.generation_gather_bytes else "")
        )
    phases = ", ".join(f"{k} {gib(v)}" for k, v in plan.phases.items())
    lines.append(f"  total per device: {gib(plan.total_bytes_per_device)} GiB (peak of phases: {phases})")
    cpu = plan.cpu_bytes_per_process
    lines.append(
        f"  CPU RAM: {gib(cpu)} GiB per process while training; peak per machine (loading included) {gib(plan.cpu_peak_bytes_per_machine)} GiB"
    )
    for note in plan.notes:
        lines.append(f"  note: {note}")
    if plan.device_memory is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(
            f"device memory {gib(plan.device_memory)} GiB (usable {gib(plan.usable_device_memory or 0)} after a reserve for the CUDA context): {verdict}"
        )
        for s in plan.suggestions:
            total = s.get("total_bytes_per_device")
            lines.append(f"  try: {s['change']}" + (f" -> {gib(total)} GiB" if total is not None else ""))
    return "\n".join(lines)


def plan_total_line(recipe: Any, accelerate_config: str | Path | None) -> str:
    """One line for `workbench validate`; a model that cannot be shaped says why instead."""
    try:
        plan = make_plan(recipe, accelerate_config)
    except Exception as exc:  # validate reports, never crashes, on a model it cannot shape
        return f"memory plan: not available ({type(exc).__name__}: {exc})"
    verdict = (
        ""
        if plan.fits is None
        else f", {'fits' if plan.fits else 'does NOT fit'} in this GPU's {gib(plan.device_memory or 0)} GiB"
    )
    return f"memory plan: {gib(plan.total_bytes_per_device)} GiB per device ({plan.launch.describe()}{verdict}); details: workbench plan"
