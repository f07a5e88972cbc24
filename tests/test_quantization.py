"""Quantized bases (QLoRA): a 4-bit NF4 Llama-style model from a config trains LoRA on every linear
layer, its adapter reloads with plain peft, `export --merge` writes a plain model that computes what
the adapted one does; and the recipe errors that keep a quantized base from going wrong."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run_recipe, write

from runner import load_recipe
from runner.errors import RecipeError

bitsandbytes = pytest.importorskip("bitsandbytes")

LLAMA = (
    "{ hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2, num_attention_heads = 4, "
    "num_key_value_heads = 2, max_position_embeddings = 128 }"
)
# A small made-up fact table: the answers can only be learnt, not guessed.
FACTS = {
    "amber": "river",
    "basil": "stone",
    "cobalt": "cloud",
    "dune": "ember",
    "elm": "frost",
    "fjord": "meadow",
    "garnet": "harbor",
    "heron": "lantern",
}


def sharegpt_rows(n: int) -> list[dict]:
    names = sorted(FACTS)
    rows = []
    for i in range(n):
        name = names[i % len(names)]
        turns = [
            {"from": "human", "value": f"Item {i}: which word goes with {name}?"},
            {"from": "gpt", "value": FACTS[name]},
        ]
        if i % 3 == 0:
            turns.insert(0, {"from": "system", "value": "Answer with one word."})
        rows.append({"conversations": turns})
    return rows


def qlora_recipe(tmp_path, quantization: str = '{ bits = 4, type = "nf4", compute_dtype = "float32" }', **extra):
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in sharegpt_rows(160)) + "\n")
    strategy = extra.get("strategy", 'type = "lora"\nr = 8\ntarget_modules = "all-linear"')
    return write(
        tmp_path / "qlora.toml",
        f"""
        [run]
        seed = 3

        [[data.sources]]
        type = "files"
        train = "{data}"

        [data]
        split = {{ train = 0.8, validation = 0.1, test = 0.1 }}

        [tokenizer]
        type = "trained"
        vocab_size = 200
        max_length = 96

        [model]
        type = "config"
        architecture = "llama"
        config = {LLAMA}
        quantization = {quantization}

        [strategy]
        {strategy}

        [task]
        type = "instruction"
        format = "sharegpt"
        template = "chatml"

        [[metrics]]
        type = "perplexity"

        [training]
        learning_rate = 1e-2
        batch_size = 16
        epochs = {extra.get("epochs", 2)}
        keep_best = false
        """,
    )


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


# bitsandbytes has a second code path for 4-bit layers on a CPU with AVX512-BF16 (weights repacked for a
# fused bf16 kernel; see runner/toolkit/quantized.py). The tests force its capability check either way,
# so both paths run on every machine: in this process through `force_avx512bf16`, in the processes a
# test starts (a run on two processes, a plain `finetune run`) through `forced_env`.
FORCING = Path(__file__).parent / "force_avx512bf16"  # its sitecustomize.py does it at start-up
HAS_AVX512BF16 = bool(bitsandbytes.functional.has_avx512bf16())  # this CPU, unforced
CPU_PATHS = {False: "cpu", True: "cpu-avx512bf16"}
NO_KERNEL = "plain bitsandbytes would run its AVX512-BF16 kernel, which this CPU lacks"


def force_avx512bf16(patch: pytest.MonkeyPatch, value: bool) -> None:
    """The capability as 4-bit layers built from now on see it (Linear4bit notes it when built)."""
    patch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: value)


def forced_env(patch: pytest.MonkeyPatch, value: bool, log: Path) -> None:
    """The same for the Python processes started from now on; each one that imports bitsandbytes
    appends its pid to `log`."""
    patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FORCING), os.environ.get("PYTHONPATH")])))
    patch.setenv("FINETUNE_TEST_AVX512BF16", "1" if value else "0")
    patch.setenv("FINETUNE_TEST_AVX512BF16_LOG", str(log))


def forced_processes(log: Path) -> set[str]:
    return {line.split()[0] for line in log.read_text().splitlines()} if log.is_file() else set()


def four_bit_layers(model) -> dict[str, object]:
    """The 4-bit layers of a model or of its peft wrapper, by their name in the base's checkpoint."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, bitsandbytes.nn.Linear4bit):
            found[name.removeprefix("base_model.model.").removesuffix(".base_layer")] = module
    return found


_RUNS: dict[bool, object] = {}


def qlora_run(tmp_path_factory, avx512bf16: bool):
    """The test QLoRA run, trained once per module for each value of the CPU's capability."""
    if avx512bf16 not in _RUNS:
        tmp = tmp_path_factory.mktemp(f"qlora-{CPU_PATHS[avx512bf16]}")
        with pytest.MonkeyPatch.context() as patch:
            force_avx512bf16(patch, avx512bf16)
            _RUNS[avx512bf16] = run_recipe(qlora_recipe(tmp), tmp / "run")
    return _RUNS[avx512bf16]


@pytest.fixture(scope="module", params=list(CPU_PATHS), ids=list(CPU_PATHS.values()))
def avx512bf16(request) -> bool:
    return request.param


@pytest.fixture(scope="module")
def qlora(tmp_path_factory, avx512bf16):
    return qlora_run(tmp_path_factory, avx512bf16)


@pytest.mark.slow
def test_qlora_trains_only_the_adapters_on_a_4bit_base_and_the_loss_falls(qlora):
    model = qlora.model
    four_bit = four_bit_layers(model)
    assert len(four_bit) == 14  # q, k, v, o, gate, up, down in each of the 2 layers: "all-linear"
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    base_loss = qlora.baselines[0]["validation"]["loss"]
    assert qlora.metrics["validation"]["loss"] < base_loss - 0.3
    environment = json.loads(qlora.run_dir.environment.read_text())
    # 4-bit weights pack two to a byte; the count is of weights, not of bytes: the same architecture
    # built unquantized, plus the adapters, has exactly as many.
    from transformers import AutoModelForCausalLM

    config = qlora.model.get_base_model().config.to_dict()
    config.pop("quantization_config", None)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(type(qlora.model.config).from_dict(config))
    adapters = sum(p.numel() for name, p in qlora.model.named_parameters() if "lora_" in name)
    assert environment["parameters"]["total"] == sum(p.numel() for p in plain.parameters()) + adapters


@pytest.mark.slow
def test_4bit_weights_stay_as_loaded_through_evaluations_and_saving(qlora):
    """After the run (baselines, evaluations, saving), on either CPU: no layer was repacked for the
    AVX512-BF16 kernel, and base_model/ holds exactly the 4-bit weights the adapter trained on."""
    from safetensors.torch import load_file

    layers = four_bit_layers(qlora.model)
    assert not [name for name, m in layers.items() if getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    assert not [name for name, m in layers.items() if m.support_avx512bf16_for_cpu]
    saved = load_file(qlora.run_dir.path / "base_model" / "model.safetensors")
    for name, layer in layers.items():
        ours = layer.state_dict()
        assert {f"{name}.{key}" for key in ours} <= saved.keys()
        for key, value in ours.items():
            assert torch.equal(value, saved[f"{name}.{key}"]), f"{name}.{key}"


@pytest.mark.slow
def test_both_cpu_paths_train_the_same_adapter(tmp_path_factory):
    """The runner computes alike with and without AVX512-BF16: the same adapter, bit for bit, and
    the same scores (repacked, training would compute in bf16 and lose the base's gradients)."""
    from safetensors.torch import load_file

    runs = [qlora_run(tmp_path_factory, value) for value in CPU_PATHS]
    adapters = [load_file(run.run_dir.path / "model" / "adapter_model.safetensors") for run in runs]
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][key], adapters[1][key]) for key in adapters[0])

    def scores(run) -> dict:
        timed = ("runtime", "per_second")
        return {
            split: {key: value for key, value in metrics.items() if not key.endswith(timed)}
            for split, metrics in run.metrics.items()
        }

    assert scores(runs[0]) == scores(runs[1]) and runs[0].baselines == runs[1].baselines


def test_gradient_checkpointing_is_on_by_default_for_a_quantized_base_only():
    from types import SimpleNamespace

    from plugins.trainers.hf import HF

    quantized, plain = SimpleNamespace(is_quantized=True), SimpleNamespace()
    default = HF(HF.Options())
    assert default._checkpointing(quantized) and not default._checkpointing(plain)
    assert not HF(HF.Options(gradient_checkpointing=False))._checkpointing(quantized)
    assert HF(HF.Options(gradient_checkpointing=True))._checkpointing(plain)


# What plain peft computes on a CPU with AVX512-BF16: bitsandbytes repacks its 4-bit layers at the first
# evaluation and multiplies in bf16, so its logits leave the runner's (computed in compute_dtype,
# float32 here) by bf16 rounding. Measured on the test model (2026-12-07, an Intel CPU with AMX):
# at most 1.5e-3 at logits of magnitude about 1, the same top token at all 164 positions of 5 texts.
PLAIN_PEFT_BF16_TOLERANCE = 1e-2


@pytest.mark.slow
def test_qlora_adapter_reloads_with_plain_peft(qlora, avx512bf16, monkeypatch):
    """Plain transformers + peft load exactly what the run saved, and compute the same logits: to
    1e-5 on a CPU without AVX512-BF16 (or a GPU), to bf16 rounding on one with it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if avx512bf16 and not HAS_AVX512BF16:
        pytest.skip(NO_KERNEL)
    force_avx512bf16(monkeypatch, avx512bf16)
    run = qlora.run_dir.path
    base = AutoModelForCausalLM.from_pretrained(run / "base_model")  # quantized, as config.json says
    assert base.is_quantized
    reloaded = PeftModel.from_pretrained(base, run / "model")
    ours = {k: v for k, v in qlora.model.state_dict().items() if "lora_" in k}
    theirs = reloaded.state_dict()
    assert ours and all(torch.equal(value, theirs[key]) for key, value in ours.items())
    ids = torch.tensor([qlora.tokenizer("Which word goes with amber? river")["input_ids"]])
    expected, got = logits(qlora.model, ids), logits(reloaded, ids)
    repacked = [
        getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in four_bit_layers(reloaded).values()
    ]
    if not avx512bf16:
        assert not any(repacked)
        assert torch.allclose(got, expected, atol=1e-5)
    else:
        assert all(repacked)  # bitsandbytes' own choice, outside the runner
        assert (got - expected).abs().max() < PLAIN_PEFT_BF16_TOLERANCE


def merged_dtypes(directory: Path) -> set[str]:
    """The dtypes of the tensors in a safetensors file, from its header ("F32", "BF16", ...)."""
    with (directory / "model.safetensors").open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {entry["dtype"] for key, entry in header.items() if key != "__metadata__"}


@pytest.mark.slow
def test_export_merge_of_qlora_writes_a_plain_model_within_tolerance(qlora):
    from transformers import AutoModelForCausalLM

    from runner.running.saved import export_run
    from runner.storage.rundir import RunDir
    from runner.toolkit.quantized import keep_4bit_layout

    merged_dir = export_run(RunDir(qlora.run_dir.path), merge=True, output=None)
    config = json.loads((merged_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert merged_dtypes(merged_dir) == {"F32"} and config["dtype"] == "float32"  # compute_dtype float32
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not getattr(merged, "is_quantized", False)
    assert all(type(m).__module__.startswith("torch") for m in merged.modules() if "Linear" in type(m).__name__)
    ids = torch.tensor([qlora.tokenizer("Which word goes with heron? lantern")["input_ids"]])
    # The adapter is merged into the dequantized 4-bit weights it trained against (compute dtype
    # float32 here), so only float rounding separates the two.
    assert (logits(merged, ids) - logits(qlora.model, ids)).abs().max() < 1e-4
    base = keep_4bit_layout(AutoModelForCausalLM.from_pretrained(qlora.run_dir.path / "base_model"))
    assert (logits(merged, ids) - logits(base, ids)).abs().max() > 1e-2  # the update is in there


@pytest.mark.slow
def test_an_8bit_base_trains_lora_with_an_8bit_optimizer(tmp_path, caplog):
    import bitsandbytes as bnb

    path = qlora_recipe(tmp_path, quantization="{ bits = 8 }", epochs=1)
    result = run_recipe(path, tmp_path / "run", ["training.optimizer=paged_adamw_8bit"])
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in result.model.modules())
    assert result.metrics["validation"]["loss"] < result.baselines[0]["validation"]["loss"] - 0.2
    # bitsandbytes logs on every 8-bit matmul that it casts its inputs (Python prints a logged
    # warning on stderr when nothing else handles it): none of those reaches the user.
    assert not [r for r in caplog.records if r.name.startswith("bitsandbytes")], caplog.records[:1]


def issues(path, overrides=None) -> list[str]:
    with pytest.raises(RecipeError) as err:
        load_recipe(path, overrides)
    return [issue.render() for issue in err.value.issues]


@pytest.mark.parametrize("strategy", ["full", "freeze"])
def test_a_strategy_that_trains_the_base_is_refused_on_a_quantized_one(tmp_path, strategy):
    found = issues(qlora_recipe(tmp_path, strategy=f'type = "{strategy}"'))
    assert len(found) == 1 and "strategy.type" in found[0] and "qlora.toml:" in found[0]
    assert f"strategy '{strategy}' trains the base's own weights" in found[0]


def test_lycoris_methods_are_refused_on_4bit_and_dora_on_8bit(tmp_path):
    (found,) = issues(qlora_recipe(tmp_path, strategy='type = "loha"'))
    assert "strategy.type" in found and "8-bit bases only" in found
    load_recipe(qlora_recipe(tmp_path, quantization="{ bits = 8 }", strategy='type = "loha"'))
    (found,) = issues(qlora_recipe(tmp_path, quantization="{ bits = 8 }", strategy='type = "lora"\nuse_dora = true'))
    assert "strategy.use_dora" in found


def test_4bit_options_are_refused_for_8_bits(tmp_path):
    (found,) = issues(qlora_recipe(tmp_path, quantization='{ bits = 8, type = "nf4" }'))
    assert "model.quantization" in found and "4-bit weights only" in found


def test_quantization_without_bitsandbytes_names_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    (found,) = issues(qlora_recipe(tmp_path))
    assert "model.quantization" in found and "finetune-runner[quantization]" in found


def test_zero3_needs_the_4bit_storage_in_the_compute_dtype(tmp_path):
    path = qlora_recipe(tmp_path)
    zero3 = ["distributed.engine=deepspeed", "distributed.zero_stage=3"]
    (found,) = issues(path, zero3)
    assert "distributed.zero_stage" in found and "compute dtype" in found
    load_recipe(path, [*zero3, 'model.quantization.quant_storage="float32"'])
    load_recipe(path, ["distributed.engine=deepspeed", "distributed.zero_stage=2"])
    (found,) = issues(qlora_recipe(tmp_path, quantization="{ bits = 8 }"), zero3)
    assert "cannot partition 8-bit" in found


def test_plan_counts_the_quantized_weights_and_lists_the_adapted_modules(tmp_path, capsys):
    from conftest import cli

    assert cli("plan", qlora_recipe(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "quantized base" in out and "in 4 bits, 0.516 bytes each" in out
    for module in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert module in out
    assert "(14 modules)" in out


@pytest.mark.slow
def test_qlora_on_two_processes_under_zero2_and_zero3_follows_one_process(tmp_path, monkeypatch, capfd):
    """On a CPU with AVX512-BF16 (forced, in every process): bitsandbytes would repack the layers at
    the first evaluation, and ZeRO-3 then failed saving its checkpoint on every rank. On a CPU
    without it, this is the same computation (test_both_cpu_paths_train_the_same_adapter)."""
    from conftest import cli
    from safetensors.torch import load_file

    from runner.storage.rundir import RunDir

    force_avx512bf16(monkeypatch, True)
    forced_env(monkeypatch, True, tmp_path / "forced.log")
    # No dropout: each process would draw its own masks.
    path = qlora_recipe(tmp_path, epochs=1, strategy='type = "lora"\ndropout = 0.0\ntarget_modules = "all-linear"')
    one = run_recipe(path, tmp_path / "one", ["training.log_every=2"]).run_dir
    two = ["--nproc", "2", "--set", "training.batch_size=8", "--set", "training.log_every=2"]
    two += ["--set", 'distributed.engine="deepspeed"']
    assert cli("run", path, "--output", tmp_path / "zero2", *two, "--set", "distributed.zero_stage=2") == 0
    zero3 = ["--set", "distributed.zero_stage=3", "--set", 'model.quantization.quant_storage="float32"']
    assert cli("run", path, "--output", tmp_path / "zero3", *two, *zero3) == 0

    def losses(run):
        return {r["step"]: r["loss"] for r in run.read_metrics_log() if r["split"] == "train" and "loss" in r}

    theirs = losses(one)
    assert len(theirs) >= 3
    adapters = []
    for name in ("zero2", "zero3"):
        ours = losses(RunDir(tmp_path / name))
        assert ours.keys() == theirs.keys()
        assert all(ours[step] == pytest.approx(theirs[step], rel=1e-3) for step in theirs), name
        adapters.append(load_file(tmp_path / name / "model" / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.allclose(adapters[0][k], adapters[1][k], atol=1e-5) for k in adapters[0])
    assert len(forced_processes(tmp_path / "forced.log")) >= 4  # two ranks for each engine
    printed = capfd.readouterr()
    assert "kernels-community" not in printed.out + printed.err  # bitsandbytes' notice, on no rank


def four_bit_layer(quant_type: str = "nf4"):
    """One 4-bit layer quantized from a seeded plain one, as bitsandbytes builds it on this CPU."""
    torch.manual_seed(0)
    plain = torch.nn.Linear(64, 64, bias=False)
    layer = bitsandbytes.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type=quant_type)
    layer.load_state_dict(plain.state_dict())
    return layer.to("cpu")  # quantizes


@pytest.mark.parametrize("avx512bf16", list(CPU_PATHS), ids=list(CPU_PATHS.values()))
def test_keep_4bit_layout_computes_as_without_avx512bf16(avx512bf16, monkeypatch):
    """A layer the runner has seen computes in eval mode, trains and saves alike whatever the CPU:
    no repacking (which would compute in bf16, drop the gradient through the layer and save
    re-quantized constants)."""
    from runner.toolkit.quantized import keep_4bit_layout

    force_avx512bf16(monkeypatch, False)
    reference = four_bit_layer().eval()
    force_avx512bf16(monkeypatch, avx512bf16)
    layer = four_bit_layer()
    assert layer.support_avx512bf16_for_cpu == avx512bf16  # the check was forced
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    assert keep_4bit_layout(torch.nn.Sequential(layer))[0] is layer
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(layer.eval()(x), reference(x))
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    x.requires_grad_(True)
    layer.train()(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    after = layer.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_keep_4bit_layout_refuses_a_layer_already_repacked():
    from bitsandbytes.functional import _convert_weight_packed_for_cpu  # pure torch: runs on any CPU

    from runner.toolkit.quantized import keep_4bit_layout

    layer = four_bit_layer()
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(
        layer.weight.data, layer.weight.quant_state
    )
    with pytest.raises(RuntimeError, match="repacked"):
        keep_4bit_layout(layer)


@pytest.mark.slow
def test_export_merge_of_a_bf16_compute_base_is_written_in_bf16(tmp_path):
    """docs/llm.md: the merged model of a 4-bit base is written in its compute dtype, 2 bytes a
    weight with bfloat16, even when the rest of the model loaded in float32 (the default dtype)."""
    from transformers import AutoModelForCausalLM

    from runner.running.saved import export_run

    bf16 = '{ bits = 4, type = "nf4", compute_dtype = "bfloat16" }'
    path = qlora_recipe(tmp_path, quantization=bf16, epochs=1)
    done = run_recipe(path, tmp_path / "run", ["training.max_steps=2", "evaluation.baseline=false"])
    merged_dir = export_run(done.run_dir, merge=True, output=None)
    assert merged_dtypes(merged_dir) == {"BF16"}
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "bfloat16"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.dtype == torch.bfloat16
    weights = sum(p.numel() for p in merged.parameters())
    assert (merged_dir / "model.safetensors").stat().st_size < 2 * weights + 100_000  # the header and config
    ids = torch.tensor([done.tokenizer("Which word goes with heron? lantern")["input_ids"]])
    # bf16 rounding of the merged weights and of every activation: measured 3.4e-3 here, 4.5e-3 for
    # the test model trained 2 epochs (at logits of magnitude about 1; written in float32: 1.8e-3).
    assert (logits(merged, ids) - logits(done.model, ids)).abs().max() < 2e-2


def test_a_plain_run_prints_no_bitsandbytes_notice_on_a_cpu_with_avx512bf16(tmp_path, monkeypatch):
    """transformers imports peft and peft bitsandbytes, in every run; on a CPU with AVX512-BF16
    (forced) bitsandbytes then logs that its optional `kernels` package is missing."""
    import subprocess

    from conftest import ROOT, finetune_subprocess, tiny_recipe

    log = tmp_path / "forced.log"
    forced_env(monkeypatch, True, log)
    recipe = tiny_recipe(tmp_path / "tiny.toml", rows=64, epochs=1)
    done = subprocess.run(
        [*finetune_subprocess(), "run", str(recipe), "--output", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert forced_processes(log), "the run never imported bitsandbytes: this test shows nothing"
    assert "kernels" not in out and "gemm_4bit" not in out, out
