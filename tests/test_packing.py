"""Padding-free packing: layouts by hand, transformers' packed-sequence mask, DPO log-probs and loss
packed vs padded (1e-5), and training losses packed vs padded (1e-4)."""

from __future__ import annotations

import pytest

from workbench.packing import pack, pack_model_inputs, pack_rows, packed_calls, plan_layout, unpack


def test_pack_rows_first_fit_by_decreasing_length():
    # sorted: 5 (i=1), 4 (i=3), 3 (i=0), 2 (i=2), 1 (i=4); capacity 6
    # 5 -> row0 [1] room 1; 4 -> row1 [3] room 2; 3 -> row2 [0] room 3; 2 -> row1 room 0; 1 -> row0 room 0
    assert pack_rows([3, 5, 2, 4, 1], capacity=6) == [[1, 4], [3, 2], [0]]
    assert pack_rows([7, 2], capacity=5) == [[0], [1]]  # too long for any row: a row of its own
    assert pack_rows([2, 2, 2], capacity=100) == [[0, 1, 2]]


def test_layout_positions_and_round_trip():
    import torch

    # lengths 3, 1, 2 padded to width 3; capacity 3 -> rows [0] and [2, 1]
    layout = plan_layout([3, 1, 2], width=3, capacity=3)
    assert (layout.rows, layout.row_width) == (2, 3)
    assert layout.position_ids.tolist() == [[0, 1, 2], [0, 1, 0]]
    ids = torch.tensor([[11, 12, 13], [21, 0, 0], [31, 32, 0]])
    packed = pack(ids, layout, fill=-1)
    assert packed.tolist() == [[11, 12, 13], [31, 32, 21]]
    assert layout.starts.tolist() == [0, 3, 5]
    assert unpack(packed, layout, shifted=False).tolist() == [[11, 12, 13], [21, 0, 0], [31, 32, 0]]
    # next-token outputs: position t of a row predicts t + 1; only predictions inside a sequence come back
    shifted = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # (R, C - 1)
    assert unpack(shifted, layout, shifted=True).tolist() == [[1.0, 2.0], [0.0, 0.0], [3.0, 0.0]]


def test_packed_labels_never_cross_sequences():
    import torch

    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    kwargs = {"input_ids": ids, "attention_mask": (ids > 0).long(), "labels": ids.clone()}
    packed, layout = pack_model_inputs(kwargs, capacity=None)  # one row
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert "attention_mask" not in packed
    assert packed["labels"].tolist() == [[-100, 6, 7, -100, 9]]  # each sequence's first token is not predicted
    left = {"input_ids": ids, "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}
    assert pack_model_inputs(left, capacity=None) is None  # left padding is left alone


def load_tiny(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype="float32", attn_implementation="sdpa").eval()


def test_transformers_masks_packed_sequences_exactly(tiny_model):
    """masking_utils reads position ids restarting at 0 (no attention mask) as a block-diagonal causal mask."""
    import torch

    model = load_tiny(tiny_model)
    a, b = torch.tensor([[4, 50, 60, 70, 80]]), torch.tensor([[9, 90, 91]])
    with torch.no_grad():
        alone = torch.cat([model(input_ids=a, use_cache=False).logits, model(input_ids=b, use_cache=False).logits], dim=1)
        positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
        packed = model(input_ids=torch.cat([a, b], dim=1), position_ids=positions, use_cache=False).logits
        leaky = model(input_ids=torch.cat([a, b], dim=1), use_cache=False).logits  # one sequence: b would see a
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(leaky[:, 5:], alone[:, 5:], atol=1e-3)


def uneven_pairs():
    """Pairs of very different lengths: 2-token answers beside 90-token ones, long and short prompts."""
    import random

    rng = random.Random(0)

    def ids(n):
        return [rng.randrange(10, 500) for _ in range(n)]

    shape = [(3, 2, 90), (60, 40, 1), (5, 70, 70), (1, 1, 3), (30, 5, 50), (8, 100, 12)]  # (prompt, chosen, rejected)
    return [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)} for p, c, r in shape]


def random_pairs(n):
    import random

    rng = random.Random(1)
    return [
        {
            "prompt_ids": [rng.randrange(10, 500) for _ in range(rng.randrange(1, 40))],
            "chosen_ids": [7] * rng.randrange(1, 60),
            "rejected_ids": [8] * rng.randrange(1, 60),
        }
        for _ in range(n)
    ]


def dpo_trainer(tiny_model, tmp_path, packing, pairs=None, **args):
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from workbench.methods.dpo import PretokenizedDPOTrainer
    from workbench.train_configs import DPOTrainConfig

    policy, ref = load_tiny(tiny_model), load_tiny(tiny_model)
    with torch.no_grad():  # make the policy differ from the reference so the loss is not log 2
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    args = DPOTrainConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=6,
        max_length=256,
        report_to=[],
        packing=packing,
        bf16=False,
        use_cpu=True,
        **{"train_sampling_strategy": "sequential", **args},
    )
    return PretokenizedDPOTrainer(
        model=policy,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(pairs or uneven_pairs()),
        processing_class=AutoTokenizer.from_pretrained(str(tiny_model)),
    )


def test_dpo_log_probs_and_loss_packed_equal_padded(tiny_model, tmp_path):
    import torch

    results = {}
    for packing in (False, True):
        trainer = dpo_trainer(tiny_model, tmp_path / str(packing), packing)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
        assert batch["input_ids"].shape == (12, 108)  # padded to the longest sequence: most of it is padding
        shapes = []
        for m in (trainer.model, trainer.ref_model):
            m.get_input_embeddings().register_forward_hook(
                lambda mod, args, out, shapes=shapes: shapes.append(tuple(args[0].shape))
            )
        with torch.no_grad():
            logps = [
                *trainer.compute_ref_log_probs(trainer.model, batch),
                *trainer.compute_ref_log_probs(trainer.ref_model, batch),
            ]
            loss = trainer._compute_loss(trainer.model, batch, return_outputs=False)
        metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items() if isinstance(v, list) and v}  # eval mode
        # 12 sequences, 658 tokens: first fit into 7 rows of 108 (108 | 100+5+2 | 93+4 | 80+20 | 75 | 75 | 61+35)
        assert set(shapes) == ({(7, 108)} if packing else {(12, 108)}), shapes
        results[packing] = (torch.stack(logps), loss, metrics)  # (policy chosen, policy rejected, ref chosen, ref rejected) x 6
    (lp0, loss0, m0), (lp1, loss1, m1) = results[False], results[True]
    assert (lp0[0] - lp0[1]).abs().max() > 10  # the pairs really differ in length
    assert (lp0[0] - lp0[2]).abs().min() > 1e-3  # policy differs from reference: a real loss, not log 2
    assert float((lp1 - lp0).abs().max()) < 1e-5  # every pair's chosen/rejected log-prob, policy and reference
    assert abs(float(loss1) - float(loss0)) < 1e-5
    for key in ("logps/chosen", "logps/rejected", "rewards/margins", "entropy", "mean_token_accuracy"):
        assert m1[key] == pytest.approx(m0[key], abs=1e-5), key


def test_packed_calls_hook_the_outermost_module_once(tiny_model):
    import torch

    model = load_tiny(tiny_model)
    ids = torch.tensor([[4, 5, 6, 7], [8, 9, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        with packed_calls(model, model):
            packed = model(input_ids=ids, attention_mask=mask).logits
    assert packed.shape == padded.shape
    assert torch.allclose(packed[mask.bool()], padded[mask.bool()], atol=1e-5)
    assert float(packed[1, 2:].abs().max()) == 0.0  # padding positions come back as zeros


def test_training_losses_packed_equal_padded(tiny_model, tmp_path):
    """Five optimizer steps on the uneven pairs, sequential order: the same losses packed or padded."""
    losses, rows = {}, {}
    for packing in (False, True):
        trainer = dpo_trainer(tiny_model, tmp_path / str(packing), packing)
        trainer.args.per_device_train_batch_size = 2
        trainer.args.max_steps = 5
        trainer.args.learning_rate = 1e-2
        trainer.args.logging_steps = 1
        seen = []
        trainer.model.get_input_embeddings().register_forward_hook(
            lambda mod, args, out, seen=seen: seen.append(args[0].shape[0])
        )
        trainer.train()
        losses[packing] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        rows[packing] = seen
    assert len(losses[True]) == 5
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
    assert losses[False][-1] < losses[False][0] - 0.05  # it trained
    assert sum(rows[True]) < sum(rows[False])  # fewer rows: really packed


def test_length_grouped_batches_pad_less_and_are_seeded(tiny_model, tmp_path):
    """group_by_length (the DPO default): a pair's chosen and rejected stay in one batch, batches pad less
    than random ones, and the order is the same for the same seed and differs for another."""
    from workbench.train_configs import DPOTrainConfig

    assert DPOTrainConfig(output_dir=str(tmp_path), bf16=False).train_sampling_strategy == "group_by_length"
    pairs = [{**p, "length": len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"]))} for p in random_pairs(64)]

    def epoch(strategy, seed):
        trainer = dpo_trainer(
            tiny_model, tmp_path / f"{strategy}{seed}", False, pairs, train_sampling_strategy=strategy, seed=seed
        )
        trainer.args.per_device_train_batch_size = 8
        batches = list(trainer.get_train_dataloader())
        return [(b["input_ids"].tolist(), int(b["attention_mask"].numel() - b["attention_mask"].sum())) for b in batches]

    grouped, again, other, shuffled = (
        epoch("group_by_length", 0),
        epoch("group_by_length", 0),
        epoch("group_by_length", 1),
        epoch("random", 0),
    )
    assert grouped == again and grouped != other
    assert sum(pad for _, pad in grouped) < 0.8 * sum(pad for _, pad in shuffled)  # 2625 vs 3777 pad tokens
    for ids, _ in grouped:  # rows i and i + B are one pair: same prompt, then its chosen (7s) / rejected (8s)
        half = len(ids) // 2
        for c, r in zip(ids[:half], ids[half:]):
            prompt_c = [t for t in c if t not in (0, 7)]
            prompt_r = [t for t in r if t not in (0, 8)]
            assert prompt_c == prompt_r


def test_reference_precompute_runs_length_sorted_and_keeps_pair_order(tiny_model, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    pairs = [{**p, "length": len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"]))} for p in random_pairs(12)]
    widths = []
    from workbench.methods.dpo import PretokenizedDPOTrainer

    original = PretokenizedDPOTrainer.compute_ref_log_probs

    def recording(self, model, inputs):
        widths.append(inputs["input_ids"].shape[1])
        return original(self, model, inputs)

    monkeypatch.setattr(PretokenizedDPOTrainer, "compute_ref_log_probs", recording)
    trainer = dpo_trainer(tiny_model, tmp_path, False, pairs, precompute_ref_log_probs=True, precompute_ref_batch_size=4)
    expected_widths = [
        max(len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in group)
        for group in (sorted(pairs, key=lambda p: -p["length"])[i : i + 4] for i in (0, 4, 8))
    ]
    assert widths == expected_widths  # longest first, each batch as wide as its own longest pair
    got = trainer.train_dataset
    assert [row["prompt_ids"] for row in got] == [p["prompt_ids"] for p in pairs]  # the pairs' own order
    batch = trainer.data_collator([{k: pairs[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for i in range(12)])
    with torch.no_grad():
        chosen, rejected = original(trainer, trainer.ref_model, batch)
    assert torch.allclose(torch.tensor(got["ref_chosen_logps"]), chosen, atol=1e-4)
    assert torch.allclose(torch.tensor(got["ref_rejected_logps"]), rejected, atol=1e-4)


def test_reward_loss_packed_equals_padded(tiny_model, tmp_path):
    """Reward model: the backbone runs packed, the score head pools the padded layout; same rewards and loss."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from workbench.config import ModelConfig
    from workbench.methods.reward import LengthGroupedRewardTrainer
    from workbench.models import load_reward_model
    from workbench.train_configs import RewardTrainConfig

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    pairs = [
        {"chosen_ids": p["prompt_ids"] + p["chosen_ids"], "rejected_ids": p["prompt_ids"] + p["rejected_ids"]}
        for p in uneven_pairs()
    ]
    out = {}
    for packing in (False, True):
        torch.manual_seed(0)  # the score head is initialized at load
        model = load_reward_model(ModelConfig(name_or_path=str(tiny_model), dtype="float32"), tokenizer).eval()
        args = RewardTrainConfig(output_dir=str(tmp_path / str(packing)), report_to=[], bf16=False, use_cpu=True, packing=packing)
        trainer = LengthGroupedRewardTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer
        )
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
        rows = []
        model.model.embed_tokens.register_forward_hook(lambda mod, a, o, rows=rows: rows.append(a[0].shape[0]))
        with torch.no_grad():
            loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
        out[packing] = (float(loss), outputs.logits.squeeze(-1), rows)
    assert out[False][2] == [12] and out[True][2] == [7]  # packed: 7 rows instead of 12 (see the DPO test)
    assert torch.allclose(out[True][1], out[False][1], atol=1e-5)
    assert out[False][1].std() > 1e-3  # rewards differ between sequences
    assert abs(out[True][0] - out[False][0]) < 1e-5
