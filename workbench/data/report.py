"""`workbench data inspect`: the data report as text, plus PNG histograms of token lengths."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short human-readable view of data_report.json."""
    lines = [
        f"rows read {report['rows_read']}, kept {report['kept']}, dropped {report['dropped']['total']}, duplicates removed {report['duplicates']['removed']} ({report['duplicates']['mode']})"
    ]
    if "labels" in report:  # several annotators per row
        lb = report["labels"]
        lines.append(
            f"annotators: {lb['annotated']} rows: {lb['unanimous']} unanimous, {lb['majority']} by majority, "
            f"{lb['ties']} ties ({lb['ties_dropped']} dropped)"
        )
    for reason, count in report["dropped"]["by_reason"].items():
        lines.append(f"  invalid: {count} x {reason}")
    for warning, count in report["warnings"].items():
        lines.append(f"  warning: {count} x {warning}")
    for src in report["sources"]:
        lines.append(
            f"  source {src['source']}: read {src['rows_read']}, valid {src['valid']}, train {src['train_after_mixture']}, eval {src['eval']} (weight {src['weight']})"
        )
    split = report["split"]
    lines.append(f"split by {split['by']}: train {split['train']}, eval {split['eval']}")
    c = report["contamination"]
    lines.append(
        f"contamination: {c['eval_pairs_in_train']} eval pairs and {c['eval_prompts_in_train']} eval prompts also in train"
    )
    if "length_bias" in report:
        lb = report["length_bias"]["train"]
        lines.append(
            f"length bias (train): chosen longer in {lb['chosen_longer']} of {lb['pairs']} pairs ({lb['chosen_longer_share']})"
        )
        warning = length_rule_warning(lb)
        if warning:
            lines.append(warning)
    for name, t in report.get("tokens", {}).items():
        parts = ", ".join(
            f"{k} mean {v.get('mean')} p95 {v.get('p95')} max {v.get('max')}" for k, v in t.items() if isinstance(v, dict)
        )
        lines.append(f"tokens ({name}): {parts}")
    for name, t in report.get("truncation", {}).items():
        lines.append(
            f"truncation ({name}): {t['truncated']} of {t['pairs']} pairs truncated, {t['lost_difference']} lost the part where chosen and rejected differ"
        )
    return lines


LENGTH_RULE_SHARE = 0.9  # a single rule this good makes the preferences learnable without reading the responses


def length_rule_warning(bias: dict[str, Any]) -> str | None:
    """A warning when "the longer (or the shorter) response is chosen" explains at least 90% of the pairs, or None."""
    pairs = bias["pairs"]
    if not pairs:
        return None
    for count, rule in ((bias["chosen_longer"], "longer"), (bias["rejected_longer"], "shorter")):
        if count / pairs >= LENGTH_RULE_SHARE:
            return (
                f"warning: one rule, 'the {rule} response is chosen', explains {count} of {pairs} train pairs "
                f"({count / pairs:.0%}): a reward model can reach that accuracy by length alone; judge it against "
                "this rule, or balance the lengths"
            )
    return None


def plot_lengths(tokenized: dict[str, list[Any]], out_dir: Path) -> list[Path]:
    """One PNG per split: histograms of each field's token lengths (prompt, chosen, rejected...) before truncation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for split, pairs in tokenized.items():
        if not pairs:
            continue
        fields = pairs[0].FIELDS
        fig, axes = plt.subplots(1, len(fields), figsize=(4 * len(fields), 3.2), squeeze=False)
        for ax, (index, name) in zip(axes[0], enumerate(fields)):
            ax.hist([p.lengths[index] for p in pairs], bins=40, color=("#4c72b0", "#55a868", "#c44e52")[index])
            ax.set_title(f"{name} tokens ({split})")
            ax.set_xlabel("tokens")
        axes[0][0].set_ylabel("records")
        fig.tight_layout()
        path = out_dir / f"lengths_{split}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
