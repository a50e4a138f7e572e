"""The one sampling path: every method and the evaluation sample, and take log-probs of what they sampled, here.

- `settings`: the recipe's `generation:` block: what each consumer refuses (one list), and how the block maps
  onto transformers' GenerationConfig and onto TRL's GRPO / RLOO fields. Pure: `validate` uses it.
- `generation`: batched, resumable generation (each completion keeps the EOS id that ended it) and the
  sample -> decode -> score hand-off used by PPO's rollouts and the evaluation.
- `logprobs`: the [prompt | response] batch layout and the one chunked loop computing log pi_T(sampled token)
  (and the entropy of pi_T) at the temperature generation sampled with, for PPO's learner and the evaluation.
"""
