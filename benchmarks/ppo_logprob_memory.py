"""Peak host memory of PPO's learning phase on a large vocabulary, side by side: this tree against another.

Each tree's learner (tests/ppo_fixed.make_learner, PPO defaults plus `--set`) runs one experience pass and
one update on the same fixed rollouts, each in a fresh process. The model is a random 2-layer Llama with a
49,152-token vocabulary (SmolLM2's) and a 64-wide hidden state, so the vocabulary-wide tensors (logits,
log-softmax, their gradients) dominate. Figures: the rise of peak RSS over the RSS before each phase,
the seconds of each phase, and the sum of the rollout's log-probs (the two trees must agree).

    git archive BASE_COMMIT | tar -x -C /tmp/base
    python benchmarks/ppo_logprob_memory.py --other /tmp/base --set value_model=separate
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def big_vocab_model(out: Path) -> Path:
    """The tiny model's tokenizer and architecture with a 49,152-token vocabulary (random weights)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    tiny = out / "tiny"
    subprocess.run([sys.executable, "-m", "workbench", "tiny-model", str(tiny)], check=True, capture_output=True)
    config = AutoConfig.from_pretrained(tiny)
    config.vocab_size = 49152
    torch.manual_seed(0)
    model_dir = out / "big-vocab"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(model_dir)
    return model_dir


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(model_dir: Path, rows: int, prompt_len: int, response_len: int, overrides: dict) -> dict:
    import torch
    from ppo_fixed import make_learner

    from workbench.sampling.logprobs import rollout_tensors

    learner, tok = make_learner(model_dir, per_device_train_batch_size=rows, **overrides)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 1000, (prompt_len - i % 7,), generator=g).tolist() for i in range(rows)]
    responses = [torch.randint(5, 1000, (response_len - i % 5,), generator=g).tolist() for i in range(rows)]
    scores = torch.rand(rows, generator=g).tolist()
    batch = rollout_tensors(prompts, responses, tok.pad_token_id, "cpu")
    out = {}
    before, t0 = rss_mb(), time.perf_counter()
    exp = learner.experience(batch, scores, kl_coef=0.03)
    out["experience"] = {"peak_rise_mb": peak_mb() - before, "seconds": time.perf_counter() - t0}
    before, t0 = rss_mb(), time.perf_counter()
    assert learner.update(1, exp, kl_coef=0.03) is not None
    out["update"] = {"peak_rise_mb": peak_mb() - before, "seconds": time.perf_counter() - t0}
    out["sum_old_logprobs"] = float(exp.old_logprobs.sum())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--other", type=Path, required=True, help="another source tree (e.g. the base commit) to compare with")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--response-len", type=int, default=32)
    p.add_argument("--set", nargs="*", default=[], help="learner overrides, e.g. value_model=separate")
    p.add_argument("--save", type=Path)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    overrides = {k: json.loads(v) if v[:1] in "0123456789[{tf" else v for k, v in (s.split("=", 1) for s in a.set)}
    if a.child:
        sys.path.insert(0, str(Path(os.environ["PYTHONPATH"].split(":")[0]) / "tests"))
        print("RESULT " + json.dumps(child(a.child, a.rows, a.prompt_len, a.response_len, overrides)))
        return
    model_dir = big_vocab_model(Path(tempfile.mkdtemp(prefix="ppo_logprob_memory_")))
    report: dict = {"command": " ".join(sys.argv), "rows": a.rows, "prompt_len": a.prompt_len, "response_len": a.response_len}
    for name, tree in (("other", a.other.resolve()), ("this", REPO)):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--other", str(a.other), "--child", str(model_dir)]
        cmd += ["--rows", str(a.rows), "--prompt-len", str(a.prompt_len), "--response-len", str(a.response_len)]
        cmd += ["--set", *a.set] if a.set else []
        env = {**os.environ, "PYTHONPATH": str(tree)}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
        if res.returncode:
            sys.exit(res.stderr[-3000:])
        report[name] = json.loads(res.stdout.split("RESULT ", 1)[1])
    print(f"{a.rows} rows x (prompt ~{a.prompt_len} + response ~{a.response_len}), vocabulary 49,152, overrides {a.set}")
    for phase in ("experience", "update"):
        o, t = report["other"][phase], report["this"][phase]
        print(
            f"{phase:<10} peak RSS rise MiB: other {o['peak_rise_mb']:.0f}, this {t['peak_rise_mb']:.0f} "
            f"(ratio {o['peak_rise_mb'] / max(t['peak_rise_mb'], 1.0):.2f}); seconds: other {o['seconds']:.2f}, this {t['seconds']:.2f}"
        )
    print(
        f"sum of rollout log-probs: other {report['other']['sum_old_logprobs']:.4f}, this {report['this']['sum_old_logprobs']:.4f}"
    )
    if a.save:
        a.save.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
