"""Memory estimates: the ZeRO accounting of model states, activations, and the rows `finetune plan` shows."""

import io
from types import SimpleNamespace

import pytest
from conftest import tiny_recipe

from runner.distributed import memory
from runner.distributed.memory import Accelerator, activation_bytes, model_state_bytes, transformer_shape

N = 1_000_000  # divisible by 4: sharded shares are exact


def test_full_finetuning_with_mixed_precision_adam_is_16_bytes_per_parameter():
    states = model_state_bytes(N, N, precision="bf16")
    assert (states.weights, states.gradients, states.optimizer) == (2 * N, 2 * N, 12 * N)
    assert states.device == 16 * N and states.host == 0
    assert model_state_bytes(N, N, precision="fp16") == states


@pytest.mark.parametrize(
    ("stage", "expected"),
    [(0, 16 * N), (1, 2 * N + 2 * N + 12 * N // 4), (2, 2 * N + (2 * N + 12 * N) // 4), (3, 16 * N // 4)],
)
def test_each_zero_stage_shards_one_more_kind_of_state(stage, expected):
    assert model_state_bytes(N, N, world_size=4, zero_stage=stage).device == expected


def test_sharding_needs_more_than_one_process():
    assert model_state_bytes(N, N, world_size=1, zero_stage=3).device == 16 * N


def test_lora_is_dominated_by_frozen_16_bit_weights():
    trainable = N // 1000
    states = model_state_bytes(N, trainable)
    assert states.weights == 2 * N
    assert states.device == 2 * N + 14 * trainable
    assert states.weights / states.device > 0.99


def test_fp32_is_also_16_bytes_but_split_4_4_8():
    states = model_state_bytes(N, N, precision="fp32")
    assert (states.weights, states.gradients, states.optimizer) == (4 * N, 4 * N, 8 * N)
    assert model_state_bytes(N, N // 10, precision="fp32").weights == 4 * N  # frozen fp32 weights: 4 bytes


def test_offloaded_optimizer_moves_to_host():
    kept = model_state_bytes(N, N, world_size=4, zero_stage=1)
    moved = model_state_bytes(N, N, world_size=4, zero_stage=1, offload_optimizer="cpu")
    assert moved.optimizer == 0 and moved.host == kept.optimizer == 12 * N // 4
    assert moved.device == kept.device - kept.optimizer


def test_zero_offload_also_moves_the_fp32_gradient_partition_from_stage_2():
    states = model_state_bytes(N, N, world_size=4, zero_stage=2, offload_optimizer="cpu")
    assert states.device == states.weights == 2 * N
    assert states.host == (12 * N + 4 * N) // 4


def test_offloaded_weights_and_nvme_leave_the_device_and_the_host():
    states = model_state_bytes(N, N, world_size=2, zero_stage=3, offload_optimizer="nvme", offload_params="cpu")
    assert states.device == 0
    assert states.host == 2 * N // 2  # the 16-bit weight shard
    assert states.nvme == (12 * N + 4 * N) // 2


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        model_state_bytes(N, 2 * N)
    with pytest.raises(ValueError):
        model_state_bytes(N, N, zero_stage=4)
    with pytest.raises(ValueError):
        model_state_bytes(N, N, precision="int8")


GPT2_SMALL = dict(hidden=768, layers=12, heads=12, vocab=50257)


def test_activations_follow_korthikanti_per_layer():
    b, s, h, a, L = 1, 1024, 768, 12, 12
    no_logits = activation_bytes(b, s, h, L, a, vocab=0)
    assert no_logits == L * s * b * h * (34 + 5 * a * s / h)
    assert activation_bytes(b, s, h, L, a, vocab=0, bytes_per_element=4) == 2 * no_logits
    assert activation_bytes(b, s, h, L, a, vocab=100) - no_logits == b * s * 100 * 4


def test_activations_shrink_with_checkpointing():
    full = activation_bytes(8, 512, **GPT2_SMALL)
    checkpointed = activation_bytes(8, 512, **GPT2_SMALL, checkpointing=True)
    assert checkpointed < full / 2


def test_activations_grow_linearly_in_batch_size():
    one = activation_bytes(1, 256, **GPT2_SMALL)
    assert activation_bytes(4, 256, **GPT2_SMALL) == pytest.approx(4 * one, rel=1e-9)


def test_transformer_shape_reads_gpt2_t5_and_missing_names():
    gpt2 = SimpleNamespace(n_embd=64, n_layer=2, n_head=4, vocab_size=800)
    assert transformer_shape(gpt2) == memory.Shape(64, 2, 4, 800)
    t5 = SimpleNamespace(d_model=512, num_layers=6, num_decoder_layers=6, num_heads=8, vocab_size=32128)
    t5.is_encoder_decoder = True
    assert transformer_shape(t5) == memory.Shape(512, 12, 8, 32128)
    assert transformer_shape(SimpleNamespace(vocab_size=10)) is None
    assert transformer_shape(None) is None


def test_auto_precision_depends_on_the_accelerator():
    cpu = Accelerator("CPU", 1, 1)
    assert memory.resolve_precision("auto", cpu) == "fp32"
    assert memory.resolve_precision("auto", Accelerator("A100", 1, 1, cuda=True, bf16=True)) == "bf16"
    assert memory.resolve_precision("auto", Accelerator("T4", 1, 1, cuda=True)) == "fp16"
    assert memory.resolve_precision("no", cpu) == "fp32"
    assert memory.resolve_precision("bf16", cpu) == "bf16"


def test_host_memory_is_known_and_bytes_format():
    assert memory.host_memory() > 0
    assert memory.format_bytes(512) == "512 B"
    assert memory.format_bytes(1.5 * 1024**3) == "1.5 GiB"
    assert memory.format_bytes(300 * 1024**2) == "300 MiB"


# -- finetune plan -----------------------------------------------------------------------------


def plan_text(path, accelerator, monkeypatch, world_size=1, overrides=(), nnodes=1):
    from rich.console import Console

    from runner import plan
    from runner.cli.plan import show_plan

    monkeypatch.setattr(memory, "detect_accelerator", lambda: accelerator)
    out = io.StringIO()
    found = plan(path, overrides=list(overrides), samples=0, nproc=world_size // nnodes, nnodes=nnodes)
    show_plan(found, Console(file=out, width=400))
    return " ".join(out.getvalue().split())


def test_plan_shows_memory_and_warns_when_it_does_not_fit(tmp_path, monkeypatch):
    recipe = tiny_recipe(tmp_path / "r.toml")
    roomy = plan_text(recipe, Accelerator("Big GPU", 80 * 1024**3, 64 * 1024**3, cuda=True, bf16=True), monkeypatch)
    assert "memory per device │ ~" in roomy
    assert "(batch 32 x 32 tokens, bf16, 16-bit copies of the weights)" in roomy  # autocast copies them
    assert "sharding │ ZeRO stage 0 over 1 process" in roomy
    assert "accelerator │ Big GPU, 80.0 GiB" in roomy
    assert "warning" not in roomy

    tiny = Accelerator("Tiny GPU", 1024, 64 * 1024**3, cuda=True, bf16=True)
    out = plan_text(recipe, tiny, monkeypatch, world_size=2)
    assert "ZeRO stage 0 over 2 processes" in out
    assert "warning: the estimate of" in out and "per device exceeds the 1.0 KiB of Tiny GPU" in out
    assert "training.gradient_checkpointing = true" in out
    assert "[distributed] engine = 'deepspeed'" in out  # shown, not taken for markup


def test_plan_shows_offload_to_host(tmp_path, monkeypatch):
    recipe = tiny_recipe(tmp_path / "r.toml")
    gpu = Accelerator("Big GPU", 80 * 1024**3, 64 * 1024**3, cuda=True, bf16=True)
    overrides = ["distributed.engine=deepspeed", "distributed.zero_stage=3", "distributed.offload_optimizer=cpu"]
    out = plan_text(recipe, gpu, monkeypatch, world_size=2, overrides=overrides)
    assert "ZeRO stage 3 over 2 processes, offload optimizer to cpu" in out
    assert "host memory (offload) │" in out and "per process" in out


def test_plan_on_the_cpu_counts_every_process_in_the_same_ram(tmp_path, monkeypatch):
    recipe = tiny_recipe(tmp_path / "r.toml")
    one = plan_text(recipe, Accelerator("CPU", 64 * 1024**3, 64 * 1024**3), monkeypatch, world_size=2)
    assert "accelerator │ CPU, 64.0 GiB" in one and "warning" not in one
    small = Accelerator("CPU", 1024**2, 1024**2)
    out = plan_text(recipe, small, monkeypatch, world_size=2)
    assert "warning: the estimate of" in out and "for 2 processes exceeds the 1.0 MiB of RAM" in out


def test_host_memory_is_a_machines_share_not_the_whole_worlds(tmp_path, monkeypatch):
    recipe = tiny_recipe(tmp_path / "r.toml")
    # The libraries' footprint, fixed at 300 MiB a process (measured, it grows with the test session):
    # 2 processes on a machine fit its 2 GiB of RAM, 8 over 4 machines (2 each) too, 8 on one do not.
    monkeypatch.setattr(memory, "resident_bytes", lambda: 300 * 1024**2)
    ram = Accelerator("CPU", 2 * 1024**3, 2 * 1024**3)
    spread = plan_text(recipe, ram, monkeypatch, world_size=8, nnodes=4)
    assert "ZeRO stage 0 over 8 processes (2 per machine)" in spread and "warning" not in spread
    together = plan_text(recipe, ram, monkeypatch, world_size=8)
    assert "warning: the estimate of" in together and "for 8 processes exceeds" in together
    gpu = Accelerator("Big GPU", 80 * 1024**3, 64 * 1024**3, cuda=True, bf16=True)
    overrides = ["distributed.engine=deepspeed", "distributed.zero_stage=3", "distributed.offload_optimizer=cpu"]
    offload = plan_text(recipe, gpu, monkeypatch, world_size=8, overrides=overrides, nnodes=4)
    assert "per process" in offload and "per machine" in offload


def test_quantized_weights_count_at_their_width_with_their_constants():
    from runner.distributed.memory import quantized_bytes_per_param

    assert quantized_bytes_per_param(8) == 1.0
    assert quantized_bytes_per_param(4) == 0.5 + 4 / 64  # an fp32 absmax per block of 64
    assert 0.5 < quantized_bytes_per_param(4, double_quant=True) < quantized_bytes_per_param(4)
    lora = N // 100
    plain = model_state_bytes(N, lora, precision="bf16")
    qlora = model_state_bytes(N, lora, precision="bf16", quantized=N - lora, quantized_bytes=0.5)
    assert plain.weights == 2 * N
    assert qlora.weights == 2 * lora + (N - lora) // 2
    assert (qlora.gradients, qlora.optimizer) == (plain.gradients, plain.optimizer)  # only the adapter trains
    with pytest.raises(ValueError):
        model_state_bytes(N, lora, quantized=N)  # trainable weights are never the quantized ones
