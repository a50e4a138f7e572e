"""`workbench plan`: byte accounting by hand, exact parameter counts, DeepSpeed's own estimators, and
the tensors a real optimizer step allocates."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from workbench import plan as P
from workbench.config import recipe_from_dict

REPO = Path(__file__).resolve().parents[1]

# Llama-3-8B's shape (public config values), written as a config.json: no weights anywhere.
LLAMA_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    tie_word_embeddings=False,
    max_position_embeddings=8192,
    rope_theta=500000.0,
)


def llama_params(v: int, h: int, i: int, layers: int, kv: int, tied: bool) -> int:
    """Hand count: embeddings (+ untied lm_head), per layer q,o (h*h), k,v (h*kv), gate/up/down (h*i), 2 norms; final norm."""
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return v * h * (1 if tied else 2) + layers * per_layer + h


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig

    out = tmp_path_factory.mktemp("llama8b")
    LlamaConfig(**LLAMA_8B, dtype="bfloat16").save_pretrained(out)
    return out


def recipe(model_path: str, method: str = "sft", **sections):
    data = {
        "method": method,
        "model": {"name_or_path": model_path},
        "data": {"sources": [{"synthetic": {"task": "vowels"}}], "max_length": 2048},
        "output_dir": "unused",
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe_from_dict(data)


# ----------------------------------------------------------------------------------------------
# Pure accounting, by hand


def test_deepspeed_states_by_hand():
    # 1000 trainable params, 4 processes, bf16, a 10-element reduce bucket, largest layer 100 params
    def states(stage, **kw):
        launch = P.Launch(processes=4, zero_stage=stage, reduce_bucket_size=10, **kw)
        return P.deepspeed_states(0, 1000, launch, largest_layer=100)

    s1 = states(1)  # 16-bit weights 2000 and grads 2000 whole; fp32 grads 4000/4; master+moments 12000/4; bucket 10*2
    assert (s1.params, s1.grads, s1.optimizer, s1.buffers, s1.cpu) == (2000, 3000, 3000, 20, 0)
    s2 = states(2)  # ZeRO-2 also partitions the 16-bit grads: 2000/4 + 1000
    assert (s2.params, s2.grads, s2.optimizer, s2.buffers) == (2000, 1500, 3000, 20)
    s3 = states(3)  # ZeRO-3 also partitions the weights; buffers: bucket 20 + 4 bytes x largest layer 100
    assert (s3.params, s3.grads, s3.optimizer, s3.buffers) == (500, 1500, 3000, 420)
    assert s3.device == 5420
    small_groups = states(3, sub_group_size=50)  # fp32 grads one 50-param sub-group at a time: 500 + 200
    assert small_groups.grads == 700
    assert states(3, sub_group_size=50, offload_optimizer=True).cpu == 4000  # offloaded: the whole fp32 partition
    assert states(1, overlap_comm=True).buffers == 40  # double bucket with overlap_comm below ZeRO-3
    off = states(2, offload_optimizer=True)  # fp32 grads 1000 + master/moments 3000 go to CPU, 16-bit grads stream out
    assert (off.params, off.grads, off.optimizer, off.cpu) == (2000, 0, 0, 4000)
    both = states(3, offload_optimizer=True, offload_params=True)
    assert (both.params, both.grads, both.optimizer, both.cpu, both.buffers) == (0, 0, 0, 4500, 420)
    fp32 = states(2, mixed_precision="no")  # fp32 engine: 4-byte weights, grads partitioned, no separate fp32 grads
    assert (fp32.params, fp32.grads, fp32.optimizer, fp32.buffers) == (4000, 1000, 3000, 40)
    # LoRA under ZeRO-3: 1000 frozen + 10 trainable, all 16-bit and partitioned; only the 10 get grads and Adam
    lora = P.deepspeed_states(1000, 10, P.Launch(processes=4, zero_stage=3, reduce_bucket_size=10), largest_layer=100)
    assert (lora.params, lora.grads, lora.optimizer) == (505, 5 + 10, 30)


def test_plain_states_and_frozen_states_by_hand():
    one = P.plain_states(0, 1000, 2, 2, P.Launch())  # bf16 AdamW: moments in bf16, no master copy
    assert (one.params, one.grads, one.optimizer) == (2000, 2000, 4000)
    ddp = P.plain_states(0, 1000, 2, 2, P.Launch(processes=2))  # DDP buckets duplicate the grads
    assert ddp.grads == 4000
    qlora = P.plain_states(1000, 10, 0.5, 4, P.Launch())  # 4-bit base, fp32 adapters
    assert (qlora.params, qlora.grads, qlora.optimizer) == (540, 40, 80)

    z3 = P.Launch(processes=4, zero_stage=3)
    assert dataclasses.astuple(P.frozen_states(1000, 2, z3, True, 100)) == (500, 0, 0, 400, 0)
    assert dataclasses.astuple(P.frozen_states(1000, 2, z3, False, 100)) == (2000, 0, 0, 0, 0)  # plain: whole
    off = dataclasses.replace(z3, offload_params=True)
    assert dataclasses.astuple(P.frozen_states(1000, 2, off, True, 100)) == (0, 0, 0, 400, 500)
    assert P.frozen_states(1000, 2, P.Launch(processes=4, zero_stage=2), True, 100).params == 2000  # not partitioned
    assert P.frozen_states(1000, 4, z3, False, 100, on_cpu=True).cpu == 4000


def test_reduce_bucket_bytes_follow_deepspeed_defaults():
    assert P.reduce_bucket_bytes(P.Launch(zero_stage=2)) == 500_000_000 * 2
    assert P.reduce_bucket_bytes(P.Launch(zero_stage=2, overlap_comm=True)) == 2 * 500_000_000 * 2
    assert P.reduce_bucket_bytes(P.Launch(zero_stage=3, overlap_comm=True)) == 500_000_000 * 2
    assert P.reduce_bucket_bytes(P.Launch(zero_stage=2, reduce_bucket_size=None), hidden=64) == 64 * 64 * 2  # "auto"
    assert P.reduce_bucket_bytes(P.Launch(zero_stage=2, contiguous_gradients=False)) == 0
    assert P.reduce_bucket_bytes(P.Launch()) == 0


SMALL = P.Shape(
    params=0, layers=3, hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4, vocab=10,
    largest_layer=0, quantizable=0, tied_embeddings=False, dtype=None,
)  # fmt: skip


def test_activation_and_kv_cache_bytes_by_hand():
    # per token: 4h (QKV in, MLP in, 2 norms) + 2q + 2kv + 4I = 32 + 16 + 8 + 64 = 120 elements
    assert P.layer_activation_elements(SMALL, tokens=10, seq=5, eager_attention=False) == 1200
    # 3 layers x 1200 x 2 bytes + logits 10 tokens x vocab 10 x (2 + 4 fp32 copy)
    assert P.activation_bytes(SMALL, rows=2, seq=5, checkpointing=False) == 7200 + 600
    # checkpointing: layer inputs 3 x 10 x 8 x 2 = 480, plus one layer recomputed 2400
    assert P.activation_bytes(SMALL, rows=2, seq=5, checkpointing=True) == 480 + 2400 + 600
    # eager attention keeps softmax outputs: rows 2 x heads 2 x 5 x 5 = 100 elements per layer
    assert P.activation_bytes(SMALL, rows=2, seq=5, checkpointing=False, eager_attention=True) == 3 * 1300 * 2 + 600
    assert P.activation_bytes(SMALL, rows=2, seq=5, checkpointing=False, logits=False, elem_bytes=4) == 3 * 1200 * 4
    # KV: 2 (K, V) x 3 layers x 3 rows x 7 tokens x 1 kv head x 4 dims x 2 bytes
    assert P.kv_cache_bytes(SMALL, rows=3, seq=7) == 1008


def test_activation_count_reduces_to_korthikanti_for_gpt_blocks():
    """GPT block (q=kv=h, GELU MLP of 4h): Korthikanti et al. count 34 sbh bytes in 16-bit, of which 2 sbh
    are 1-byte dropout masks, i.e. 16 sbh 16-bit elements. Our gated MLP keeps 2I more than GELU's."""
    h = 64
    gpt = dataclasses.replace(SMALL, hidden=h, heads=4, kv_heads=4, head_dim=16, intermediate=4 * h)
    gelu_elements = P.layer_activation_elements(gpt, tokens=1, seq=1, eager_attention=False) - 2 * gpt.intermediate
    assert gelu_elements * 2 + 2 * h == 34 * h  # + the two 1-byte dropout masks per token and hidden unit


def test_parse_bytes_and_precision():
    assert P.parse_bytes("80GiB") == 80 * 2**30
    assert P.parse_bytes("24GB") == 24e9
    assert P.parse_bytes("1024") == 1024
    with pytest.raises(P.WorkbenchError, match="--device-memory"):
        P.parse_bytes("lots")
    assert P.resolve_precision("dpo", {}, "no") == "bf16"  # the TRL-backed methods default to bf16 on GPUs
    assert P.resolve_precision("dpo", {"bf16": False}, "no") == "no"
    assert P.resolve_precision("ppo", {}, "fp16") == "fp16"  # PPO follows accelerate
    assert P.resolve_precision("sft", {}, "bf16", use_cpu=True) == "no"


def test_launch_read_from_the_shipped_accelerate_configs():
    z3 = P.launch_from_config(REPO / "accelerate_configs/zero3_offload.yaml", "dpo", {})
    assert (z3.processes, z3.zero_stage, z3.offload_optimizer, z3.offload_params, z3.mixed_precision) == (
        8,
        3,
        True,
        True,
        "bf16",
    )
    z1 = P.launch_from_config(REPO / "accelerate_configs/zero1.yaml", "ppo", {})
    assert (z1.zero_stage, z1.offload_optimizer, z1.mixed_precision) == (1, False, "bf16")
    ddp = P.launch_from_config(REPO / "accelerate_configs/multi_gpu_ddp.yaml", "sft", {})
    assert (ddp.processes, ddp.zero_stage) == (8, None)
    cpu = P.launch_from_config(REPO / "accelerate_configs/cpu_zero2.yaml", "sft", {})
    assert (cpu.processes, cpu.zero_stage, cpu.mixed_precision) == (2, 2, "no")
    multi = P.launch_from_config(REPO / "accelerate_configs/multi_node_zero3.yaml", "sft", {})
    assert (multi.processes, multi.processes_per_machine) == (16, 8)


def test_launch_read_from_a_deepspeed_json(tmp_path):
    ds = {
        "bf16": {"enabled": True},
        "zero_optimization": {
            "stage": 3,
            "offload_optimizer": {"device": "cpu"},
            "reduce_bucket_size": "auto",
            "overlap_comm": False,
            "sub_group_size": 1e8,
        },
    }
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    (tmp_path / "acc.yaml").write_text(
        "distributed_type: DEEPSPEED\nnum_processes: 4\nmixed_precision: 'no'\ndeepspeed_config: {deepspeed_config_file: ds.json}\n"
    )
    launch = P.launch_from_config(tmp_path / "acc.yaml", "ppo", {})
    assert (launch.zero_stage, launch.offload_optimizer, launch.offload_params, launch.mixed_precision) == (
        3,
        True,
        False,
        "bf16",
    )
    assert (launch.reduce_bucket_size, launch.overlap_comm, launch.sub_group_size, launch.processes) == (None, False, 10**8, 4)


# ----------------------------------------------------------------------------------------------
# Which models each method holds


def roles_of(r) -> list[tuple[str, str, str]]:
    roles, _ = P.model_roles(r, P.train_settings(r))
    return [(x.role, x.training, x.placement) for x in roles]


def test_roles_per_method():
    base = "some/model"
    assert roles_of(recipe(base, "sft")) == [("policy", "full", "engine")]
    assert roles_of(recipe(base, "reward")) == [("reward", "full", "engine")]
    dpo = recipe(base, "dpo")
    assert roles_of(dpo) == [("policy", "full", "engine"), ("reference", "frozen", "engine")]
    assert roles_of(recipe(base, "dpo", model={"lora": {"r": 8}})) == [("policy", "lora", "engine")]
    assert roles_of(recipe(base, "dpo", reference={"precompute_log_probs": True})) == [("policy", "full", "engine")]
    separate = recipe(base, "dpo", model={"lora": {"r": 8}}, reference={"name_or_path": "other"})
    assert roles_of(separate) == [("policy", "lora", "engine"), ("reference", "frozen", "engine")]
    ppo = recipe(base, "ppo", reward_model={"name_or_path": "rm"}, train={"value_model": "separate"})
    assert roles_of(ppo) == [
        ("policy", "full", "engine"),
        ("reference", "frozen", P.PPO_REFERENCE),  # an inference engine sharded like the policy under ZeRO-3, else plain
        ("value", "full", "engine"),
        ("reward", "frozen", "plain"),  # a whole copy on each process's device
    ]
    ppo_default = recipe(base, "ppo", reward_model={"name_or_path": "rm"})  # value head on the policy's backbone
    assert roles_of(ppo_default) == [
        ("policy", "full", "engine"),
        ("reference", "frozen", P.PPO_REFERENCE),
        ("reward", "frozen", "plain"),
    ]
    ppo_lora = recipe(base, "ppo", model={"lora": {"r": 8}}, reward_model={"function": "m:f"})
    assert roles_of(ppo_lora) == [("policy", "lora", "engine")]  # value head on the policy's backbone
    shared = recipe(base, "ppo", reward_model={"function": "m:f"}, train={"value_model": "shared"})
    assert roles_of(shared) == [("policy", "full", "engine"), ("reference", "frozen", P.PPO_REFERENCE)]
    rs = recipe(base, "rejection_sampling", reward_model={"name_or_path": "rm"})
    assert roles_of(rs) == [("policy", "full", "engine"), ("reward", "frozen", "cpu")]


def test_value_rule_follows_value_init_and_dtype():
    r = recipe("pol", "ppo", reward_model={"name_or_path": "rm"}, train={"value_init": "reward"})
    value = P.value_role(r, P.train_settings(r))
    assert (value.name_or_path, value.head, value.training, value.dtype) == ("rm", "token-cls", "full", "float32")
    r = recipe("pol", "ppo", model={"dtype": "bfloat16"}, reward_model={"function": "m:f"}, train={"value_model": "separate"})
    value = P.value_role(r, P.train_settings(r))
    assert (value.name_or_path, value.dtype) == ("pol", "bfloat16")


def test_roles_for_methods_planned_by_name_grpo_rloo_kto():
    """grpo/rloo read TRL's own defaults (GRPO beta 0.0: no reference; RLOO 0.05: a reference); kto is like dpo."""
    dpo = recipe("pol", "dpo", reward_model={"name_or_path": "rm"})
    grpo = dataclasses.replace(dpo, method="grpo", train={})
    assert roles_of(grpo) == [("policy", "full", "engine"), ("reward", "frozen", "plain")]
    assert roles_of(dataclasses.replace(grpo, train={"beta": 0.04}))[1] == ("reference", "frozen", "engine")
    rloo = dataclasses.replace(dpo, method="rloo", train={})
    assert roles_of(rloo) == [("policy", "full", "engine"), ("reference", "frozen", "engine"), ("reward", "frozen", "plain")]
    lora = dataclasses.replace(rloo, model=dataclasses.replace(dpo.model, lora={"r": 8}))
    assert roles_of(lora) == [("policy", "lora", "engine"), ("reward", "frozen", "plain")]
    kto = dataclasses.replace(dpo, method="kto", train={})
    assert roles_of(kto) == [("policy", "full", "engine"), ("reference", "frozen", "engine")]


# ----------------------------------------------------------------------------------------------
# Shapes: exact against a meta-device model and by hand


def test_param_counts_exact_against_meta_models(llama8b, tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    shape = P.model_shape(str(llama8b))
    assert shape.params == llama_params(128256, 4096, 14336, 32, 1024, tied=False) == 8_030_261_248
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(llama8b))
    assert shape.params == sum(p.numel() for p in meta.parameters())
    assert shape.largest_layer == 128256 * 4096  # the embedding (and the lm_head)
    assert (shape.layers, shape.kv_heads, shape.head_dim, shape.dtype) == (32, 8, 128, "bfloat16")

    small = dict(
        vocab_size=100, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    LlamaConfig(**small, tie_word_embeddings=True).save_pretrained(tmp_path / "tied")
    tied = P.model_shape(str(tmp_path / "tied"))
    assert tied.tied_embeddings and tied.params == llama_params(100, 16, 24, 2, 8, tied=True)  # counted once
    # heads: the value model drops the lm_head for a (h -> 1) score with bias; the reward model's score has none
    assert P.model_shape(str(tmp_path / "tied"), "token-cls").params == llama_params(100, 16, 24, 2, 8, tied=True) + 16 + 1
    assert P.model_shape(str(tmp_path / "tied"), "seq-cls").params == llama_params(100, 16, 24, 2, 8, tied=True) + 16


def test_lora_and_qlora_counts(llama8b):
    # r=16 on every Linear of the decoder (not lm_head): r x (in + out) per layer: q 8192, k 5120, v 5120, o 8192, gate/up/down 18432 each
    role = P.Role("policy", str(llama8b), training="lora", lora={"r": 16}, dtype="bfloat16")
    m = P.plan_model(role, P.Launch())
    assert m.trainable_params == 32 * 16 * (8192 + 5120 + 5120 + 8192 + 3 * 18432) == 41_943_040
    assert m.params == 8_030_261_248 + m.trainable_params
    assert m.states.optimizer == 2 * 4 * m.trainable_params  # fp32 adapters, torch AdamW
    q = P.plan_model(dataclasses.replace(role, quantization="4bit"), P.Launch())
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    other = 8_030_261_248 - linear  # embeddings, lm_head, norms: upcast to fp32 by prepare_model_for_kbit_training
    assert q.states.params == pytest.approx(linear * P.NF4_BYTES + other * 4 + 4 * m.trainable_params)


# ----------------------------------------------------------------------------------------------
# Cross-check: DeepSpeed's own estimators, policy of a Llama-8B config on 8 GPUs


@pytest.mark.parametrize(
    "stage,offload_opt,offload_params",
    [(2, False, False), (2, True, False), (3, False, False), (3, True, False), (3, True, True)],
)
def test_policy_matches_deepspeed_estimators_within_10_percent(llama8b, stage, offload_opt, offload_params):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    launch = P.Launch(
        processes=8, zero_stage=stage, offload_optimizer=offload_opt, offload_params=offload_params, overlap_comm=stage == 3
    )
    # DeepSpeed's estimators assume an fp32 load (their 4 x gpus_per_node CPU term)
    plan = P.build_plan(recipe(str(llama8b), "sft", model={"dtype": "float32"}), launch)
    policy = plan.models[0]
    shape = P.model_shape(str(llama8b))
    if stage == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(shape.params, 8, 1, offload_opt, additional_buffer_factor=1.0)
    else:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            shape.params, shape.largest_layer, 8, 1, offload_opt, offload_params, zero_init=True, additional_buffer_factor=1.0
        )
    # the estimators leave out the reduce bucket DeepSpeed allocates (1 GB at the default size); the plan adds it.
    # ZeRO-3 without offload: the plan is 2P/N above (the estimator's 18 bytes/param leave out the 16-bit partition)
    states = policy.states.device - P.reduce_bucket_bytes(launch)
    assert states == pytest.approx(gpu, rel=0.10)
    assert states >= gpu
    assert plan.cpu_peak_bytes_per_machine == pytest.approx(cpu, rel=0.10)


def test_largest_layer_is_deepspeeds(llama8b):
    import torch
    from deepspeed.runtime.zero.stage3 import model_to_params
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(llama8b))
    assert model_to_params(meta)[1] == P.model_shape(str(llama8b)).largest_layer


# ----------------------------------------------------------------------------------------------
# Measured: the tensors one real optimizer step allocates (CPU, fp32)


def storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def one_step(model) -> tuple[int, int, int, int]:
    """(params, grads, Adam moments, step counters) storage bytes after one AdamW step."""
    import torch

    ids = torch.arange(1, 33).reshape(2, 16)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    moments = [s[k] for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]
    steps = [s["step"] for s in opt.state.values()]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return storage_bytes(model.parameters()), storage_bytes(grads), storage_bytes(moments), storage_bytes(steps)


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_planned_states_equal_allocated_tensors_after_one_step(tiny_model, tokenizer, lora):
    from workbench.config import ModelConfig
    from workbench.models import apply_lora, load_causal_lm

    cfg = ModelConfig(name_or_path=str(tiny_model), dtype="float32", lora=lora)
    model = load_causal_lm(cfg, tokenizer)
    if lora:
        model = apply_lora(model, cfg, "CAUSAL_LM")
    params, grads, moments, steps = one_step(model)
    role = P.Role("policy", str(tiny_model), training="lora" if lora else "full", lora=lora, dtype="float32")
    planned = P.plan_model(role, P.Launch(mixed_precision="no"))
    assert planned.states.params == params
    assert planned.states.grads == grads
    assert planned.states.optimizer == moments
    # besides the moments torch keeps one fp32 step counter per parameter tensor (bytes, not per-parameter memory)
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    assert steps == 4 * n_tensors
    assert planned.states.params + planned.states.grads + planned.states.optimizer == params + grads + moments


# ----------------------------------------------------------------------------------------------
# The plan as a whole, the CLI, validate and launch


def test_dpo_8b_plan_json_keys_and_fit(llama8b, tmp_path, capsys):
    from workbench.cli import main

    path = tmp_path / "dpo.yaml"
    path.write_text(
        f"method: dpo\nmodel: {{name_or_path: {llama8b}}}\ndata: {{sources: [{{synthetic: {{task: vowels}}}}], max_length: 1024}}\n"
        "train: {per_device_train_batch_size: 2}\noutput_dir: unused\n"
    )
    cfg = str(REPO / "accelerate_configs/zero3.yaml")
    assert main(["plan", str(path), "--accelerate-config", cfg, "--json", "--device-memory", "80GiB"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["role"] for m in out["models"]] == ["policy", "reference"]
    for m in out["models"]:
        assert set(m) >= {"role", "params", "trainable_params", "bytes_per_device"}
        assert set(m["bytes_per_device"]) >= {"params", "grads", "optimizer"}
    assert out["models"][0]["params"] == 8_030_261_248 and out["models"][1]["trainable_params"] == 0
    assert out["models"][1]["bytes_per_device"]["params"] == 2 * 8_030_261_248 // 8  # frozen, 16-bit, ZeRO-3 partitioned
    assert out["activations_bytes_per_device"] < out["activations_bytes_per_device_without_checkpointing"]
    states = sum(m["bytes_per_device"]["total"] for m in out["models"])
    assert out["total_bytes_per_device"] == pytest.approx(states + out["activations_bytes_per_device"], abs=2)
    assert out["fits"] is True and out["suggestions"] == []

    assert main(["plan", str(path), "--json", "--device-memory", "80GiB"]) == 0  # one GPU, no DeepSpeed
    single = json.loads(capsys.readouterr().out)
    assert single["fits"] is False
    fixes = [s for s in single["suggestions"] if s["fits"]]
    assert fixes and all(s["total_bytes_per_device"] <= single["usable_device_memory_bytes"] for s in fixes)
    assert any("LoRA" in s["change"] for s in fixes)

    assert main(["plan", str(path), "--accelerate-config", cfg, "--device-memory", "80GiB"]) == 0
    table = capsys.readouterr().out
    assert "policy" in table and "reference" in table and "fits" in table


def test_ppo_plan_has_kv_cache_and_zero3_gather(tiny_model, tmp_path):
    r = recipe(
        str(tiny_model),
        "ppo",
        reward_model={"name_or_path": str(tiny_model)},
        generation={"batch_size": 4, "max_new_tokens": 8},
        train={"value_model": "separate"},
    )
    assert [m.role for m in P.build_plan(dataclasses.replace(r, train={}), P.Launch(processes=2, zero_stage=3)).models] == [
        "policy",
        "reference",
        "reward",
    ]  # the default value head on the policy's backbone adds no model (and no engine to merge buffers with)
    r = dataclasses.replace(r, data=dataclasses.replace(r.data, max_length=32))
    train = P.train_settings(r)
    launch = P.Launch(processes=2, zero_stage=3, overlap_comm=True)
    plan = P.build_plan(r, launch)
    shape = P.model_shape(str(tiny_model))
    assert plan.kv_cache_bytes_per_device == P.kv_cache_bytes(shape, 4, 16 + 8, 2)  # prompts 32 // 2, + 8 new
    assert plan.generation_gather_bytes == shape.params * 2 / 2
    assert plan.micro_batch_rows == train["per_device_train_batch_size"] // train["num_mini_batches"]
    assert [m.role for m in plan.models] == ["policy", "reference", "value", "reward"]
    # one engine for policy + value: one reduce bucket and one gathered-layer allowance
    assert plan.models[2].states.buffers == 0
    assert plan.models[0].states.buffers == P.reduce_bucket_bytes(launch) + 4 * shape.largest_layer
    assert plan.models[1].states.params == shape.params * 2 / 2  # the reference: a 16-bit inference engine, sharded over 2
    rm = P.model_shape(str(tiny_model), "seq-cls")
    assert plan.models[3].states.params == rm.params * 4 and plan.models[3].states.cpu == 0  # fp32 RM, whole on the device
    assert plan.phases["generation"] == plan.states_bytes + plan.kv_cache_bytes_per_device + plan.generation_gather_bytes


def test_generation_kv_cache_holds_every_sample_of_a_generation_batch(llama8b, tiny_model):
    """Each generate call holds its prompts x their samples; the cache is sized for those rows, not for the prompts."""
    gib = 2**30
    # PPO, the issue's 8B example: micro 64 = 8 prompts x 8 generations; generation.batch_size 16 >= 8 prompts, so one
    # call holds all 8 prompts x 8 samples = 64 rows of 512 + 256 tokens: 2 (K, V) x 32 layers x 64 x 768 x 8 kv heads
    # x 128 dims x 2 bytes = 6 GiB (sizing it for min(16, 64) = 16 rows gave 1.5 GiB)
    ppo = recipe(
        str(llama8b),
        "ppo",
        data={"max_length": 1024, "max_prompt_length": 512},
        reward_model={"name_or_path": str(llama8b)},
        generation={"max_new_tokens": 256, "batch_size": 16},
        train={"per_device_train_batch_size": 64, "num_generations": 8},
    )
    assert P.build_plan(ppo, P.Launch()).kv_cache_bytes_per_device == 6 * gib
    # generation.batch_size 4 < 8 prompts: calls of 4 prompts x 8 samples = 32 rows
    ppo = dataclasses.replace(ppo, generation=dataclasses.replace(ppo.generation, batch_size=4))
    assert P.build_plan(ppo, P.Launch()).kv_cache_bytes_per_device == 3 * gib
    # GRPO (TRL counts completions): one generate call holds generation_batch_size / processes completions,
    # 32 / 2 = 16 rows of 16 + 8 tokens on the tiny model (2 layers, 2 kv heads of 16, float32)
    grpo = recipe(
        str(tiny_model),
        "grpo",
        model={"dtype": "float32"},
        data={"max_length": 32},
        reward_model={"function": "m:f"},
        generation={"max_new_tokens": 8},
        train={"per_device_train_batch_size": 8, "num_generations": 4, "generation_batch_size": 32},
    )
    assert P.build_plan(grpo, P.Launch(processes=2)).kv_cache_bytes_per_device == 2 * 2 * 16 * 24 * 2 * 16 * 4
    # without generation_batch_size: per_device x steps_per_generation (default: the accumulation steps) = 8 x 3 rows
    grpo = dataclasses.replace(
        grpo, train={"per_device_train_batch_size": 8, "num_generations": 4, "gradient_accumulation_steps": 3}
    )
    assert P.build_plan(grpo, P.Launch(processes=2)).kv_cache_bytes_per_device == 2 * 2 * 24 * 24 * 2 * 16 * 4


def test_rejection_sampling_generates_with_a_plain_copy_in_its_own_phase(tiny_model):
    r = recipe(str(tiny_model), "rejection_sampling", model={"dtype": "float32"}, reward_model={"function": "m:f"})
    r = dataclasses.replace(r, data=dataclasses.replace(r.data, max_length=32))
    plan = P.build_plan(r, P.Launch(processes=2, zero_stage=2))
    shape = P.model_shape(str(tiny_model))
    gen = r.generation  # batch_size prompts x num_samples rows, prompt 16 + max_new_tokens, fp32 as loaded
    assert plan.kv_cache_bytes_per_device == P.kv_cache_bytes(shape, gen.batch_size * gen.num_samples, 16 + gen.max_new_tokens, 4)
    assert plan.generation_gather_bytes == shape.params * 4
    assert plan.phases["generation"] == plan.kv_cache_bytes_per_device + plan.generation_gather_bytes  # SFT states not yet held
    assert plan.models[0].states.params == shape.params * 2  # the SFT stage: bf16 in the ZeRO-2 engine


def test_plan_labels_say_what_they_describe(tiny_model):
    """The precision names where it comes from, PPO's reference note matches the copy counted, and the manifest's
    planned total is labelled with what the measured peak is."""
    # the TRL-backed methods' bf16 is a GPU default: a CPU run trains in float32, so the label says so
    launch = P.launch_from_config(None, "sft", {})
    assert launch.describe().endswith("mixed precision bf16 (" + P.GPU_DEFAULT_PRECISION + ")")
    assert "without one the run trains in float32" in P.GPU_DEFAULT_PRECISION
    assert P.launch_from_config(None, "sft", {"bf16": True}).describe().endswith("mixed precision bf16")  # asked for
    assert P.launch_from_mapping({"use_cpu": True}, REPO, "sft", {}, "cpu").describe().endswith("mixed precision no")
    # PPO's reference under ZeRO-2 is a whole plain copy in its load dtype (ppo_learner.frozen_engine), not a shard
    r = recipe(str(tiny_model), "ppo", model={"dtype": "float32"}, reward_model={"function": "m:f"})
    shape = P.model_shape(str(tiny_model))
    ref2 = P.build_plan(r, P.Launch(processes=2, zero_stage=2)).models[1]
    assert ref2.role == "reference" and ref2.placement == "plain" and "sharded like the policy" not in ref2.note
    assert "whole on each process's device" in ref2.note and ref2.weight_dtype == "float32"
    assert ref2.states.params == shape.params * 4
    ref3 = P.build_plan(r, P.Launch(processes=2, zero_stage=3)).models[1]
    assert ref3.placement == "engine" and "sharded like the policy (ZeRO-3)" in ref3.note
    assert ref3.states.params == shape.params * 2 / 2  # 16-bit inside the engine, one half per process
    # the manifest: a planned device total beside a CPU process's resident set is marked as not comparable
    fields = P.planned_memory(recipe(str(tiny_model), "sft", data={"max_length": 32}), "cpu_max_rss")
    assert set(fields) == {"planned_device_memory_mb", "planned_vs_measured"} and fields["planned_device_memory_mb"] > 0
    assert fields["planned_vs_measured"].startswith("not comparable: peak_memory_mb is cpu_max_rss")
    assert P.planned_vs_measured("cuda_max_allocated").startswith("comparable: ")


def test_validate_prints_the_plan_total(tmp_path, tiny_model, capsys):
    from workbench.cli import main

    path = tmp_path / "sft.yaml"
    path.write_text(
        f"method: sft\nmodel: {{name_or_path: {tiny_model}}}\ndata: {{sources: [{{synthetic: {{task: vowels}}}}], max_length: 64}}\noutput_dir: {tmp_path / 'run'}\n"
    )
    main(["validate", str(path)])
    assert "memory plan:" in capsys.readouterr().out


def test_launch_refuses_when_the_plan_exceeds_the_gpu(tmp_path, tiny_model, monkeypatch, capsys):
    from workbench.cli import main

    path = tmp_path / "sft.yaml"
    path.write_text(
        f"method: sft\nmodel: {{name_or_path: {tiny_model}}}\ndata: {{sources: [{{synthetic: {{task: vowels}}}}], max_length: 64}}\noutput_dir: {tmp_path / 'run'}\n"
    )
    monkeypatch.setattr(P, "detected_device_memory", lambda: 1.5 * 2**30)  # usable 0.5 GiB after the 1 GiB reserve
    monkeypatch.setattr(P.build, "activation_bytes", lambda *a, **k: 2**30)  # a plan that exceeds it
    import workbench.launch as launch_module

    launched = []
    monkeypatch.setattr(launch_module, "launch", lambda *a, **k: launched.append(a) or 0)
    cfg = str(REPO / "accelerate_configs/cpu_ddp.yaml")
    assert main(["launch", str(path), "--accelerate-config", cfg]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "GiB" in err and not launched
    assert main(["launch", str(path), "--accelerate-config", cfg, "--force"]) == 0
    assert len(launched) == 1


def test_a_model_without_a_readable_config_is_one_clear_error(tmp_path, capsys):
    from workbench.cli import main

    path = tmp_path / "sft.yaml"
    path.write_text("method: sft\nmodel: {name_or_path: nobody/no-such-model}\ndata: {sources: [{synthetic: {task: vowels}}]}\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "nobody/no-such-model" in err and "config.json" in err and "Traceback" not in err
    assert main(["plan", str(path), "--device-memory", "lots"]) == 2
    assert "--device-memory" in capsys.readouterr().err
