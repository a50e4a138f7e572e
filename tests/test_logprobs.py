"""Evaluation's response log-probs: computed from only the positions that predict response tokens
(`logits_to_keep`) and a few rows at a time, they equal log_softmax of the whole forward's logits."""

from __future__ import annotations

import pytest
import torch

from workbench.sampling.logprobs import response_logprobs, rollout_tensors, token_logprobs


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()


PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 14, 15], [16, 17]]
RESPONSES = [[20, 21, 22, 23], [24], [25, 26], [27, 28, 29, 30, 31, 32]]


def direct(model, prompt, response, temperature):
    """log p(response | prompt) from one unpadded forward over the whole sequence."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature  # (P + R, V)
    steps = logits[len(prompt) - 1 : len(prompt) - 1 + len(response)]
    return torch.log_softmax(steps, -1).gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1).tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equal_an_unpadded_full_forward(model, temperature):
    got = token_logprobs(model, PROMPTS, RESPONSES, pad_id=0, batch_size=3, temperature=temperature)
    for prompt, response, row in zip(PROMPTS, RESPONSES, got):
        assert len(row) == len(response)
        assert row == pytest.approx(direct(model, prompt, response, temperature), abs=1e-5)


def test_kept_logits_and_whole_logits_give_the_same_rows(model):
    batch = rollout_tensors(PROMPTS, RESPONSES, pad_id=0, device="cpu")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        whole = model(**inputs).logits  # (B, P + R, V)
        kept = model(**inputs, logits_to_keep=batch["response_mask"].shape[1] + 1).logits  # (B, R + 1, V)
    assert kept.shape[1] == batch["response_mask"].shape[1] + 1 < whole.shape[1]
    a = response_logprobs(whole, batch, chunk_rows=1)
    b = response_logprobs(kept, batch, chunk_rows=4)
    ref = torch.log_softmax(whole[:, batch["prompt_width"] - 1 : -1].float(), -1)
    ref = ref.gather(-1, batch["input_ids"][:, batch["prompt_width"] :].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(a, ref, atol=1e-6) and torch.allclose(b, ref, atol=1e-6)
