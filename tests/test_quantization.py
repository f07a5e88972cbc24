"""Quantized bases (QLoRA): a 4-bit NF4 Llama-style model from a config trains LoRA on every linear
layer, its adapter reloads with plain peft, `export --merge` writes a plain model that computes what
the adapted one does; and the recipe errors that keep a quantized base from going wrong."""

import importlib.util
import json

import pytest
import torch
from conftest import run_recipe, write

from runner.cli.commands import load_and_validate
from runner.errors import RecipeError

pytest.importorskip("bitsandbytes")

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


@pytest.fixture(scope="module")
def qlora(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qlora")
    return run_recipe(qlora_recipe(tmp), tmp / "run")


@pytest.mark.slow
def test_qlora_trains_only_the_adapters_on_a_4bit_base_and_the_loss_falls(qlora):
    import bitsandbytes as bnb

    model = qlora.model
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
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


def test_gradient_checkpointing_is_on_by_default_for_a_quantized_base_only():
    from types import SimpleNamespace

    from plugins.trainers.hf import HF

    quantized, plain = SimpleNamespace(is_quantized=True), SimpleNamespace()
    default = HF(HF.Options())
    assert default._checkpointing(quantized) and not default._checkpointing(plain)
    assert not HF(HF.Options(gradient_checkpointing=False))._checkpointing(quantized)
    assert HF(HF.Options(gradient_checkpointing=True))._checkpointing(plain)


@pytest.mark.slow
def test_qlora_adapter_reloads_with_plain_peft_to_the_same_logits(qlora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = qlora.run_dir.path
    base = AutoModelForCausalLM.from_pretrained(run / "base_model")  # quantized, as config.json says
    assert base.is_quantized
    reloaded = PeftModel.from_pretrained(base, run / "model")
    ids = torch.tensor([qlora.tokenizer("Which word goes with amber? river")["input_ids"]])
    assert torch.allclose(logits(reloaded, ids), logits(qlora.model, ids), atol=1e-5)


@pytest.mark.slow
def test_export_merge_of_qlora_writes_a_plain_model_within_tolerance(qlora):
    from transformers import AutoModelForCausalLM

    from runner.cli.saved import export_run
    from runner.storage.rundir import RunDir

    merged_dir = export_run(RunDir(qlora.run_dir.path), merge=True, output=None)
    config = json.loads((merged_dir / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not getattr(merged, "is_quantized", False)
    assert all(type(m).__module__.startswith("torch") for m in merged.modules() if "Linear" in type(m).__name__)
    ids = torch.tensor([qlora.tokenizer("Which word goes with heron? lantern")["input_ids"]])
    # The adapter is merged into the dequantized 4-bit weights it trained against (compute dtype
    # float32 here), so only float rounding separates the two.
    assert (logits(merged, ids) - logits(qlora.model, ids)).abs().max() < 1e-4
    base = AutoModelForCausalLM.from_pretrained(qlora.run_dir.path / "base_model")
    assert (logits(merged, ids) - logits(base, ids)).abs().max() > 1e-2  # the update is in there


@pytest.mark.slow
def test_an_8bit_base_trains_lora_with_an_8bit_optimizer(tmp_path):
    import bitsandbytes as bnb

    path = qlora_recipe(tmp_path, quantization="{ bits = 8 }", epochs=1)
    result = run_recipe(path, tmp_path / "run", ["training.optimizer=paged_adamw_8bit"])
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in result.model.modules())
    assert result.metrics["validation"]["loss"] < result.baselines[0]["validation"]["loss"] - 0.2


def issues(path, overrides=None) -> list[str]:
    with pytest.raises(RecipeError) as err:
        load_and_validate(path, overrides)
    return [issue.render() for issue in err.value.issues]


@pytest.mark.parametrize("strategy", ["full", "freeze"])
def test_a_strategy_that_trains_the_base_is_refused_on_a_quantized_one(tmp_path, strategy):
    found = issues(qlora_recipe(tmp_path, strategy=f'type = "{strategy}"'))
    assert len(found) == 1 and "strategy.type" in found[0] and "qlora.toml:" in found[0]
    assert f"strategy '{strategy}' trains the base's own weights" in found[0]


def test_lycoris_methods_are_refused_on_4bit_and_dora_on_8bit(tmp_path):
    (found,) = issues(qlora_recipe(tmp_path, strategy='type = "loha"'))
    assert "strategy.type" in found and "8-bit bases only" in found
    load_and_validate(qlora_recipe(tmp_path, quantization="{ bits = 8 }", strategy='type = "loha"'))
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
    load_and_validate(path, [*zero3, 'model.quantization.quant_storage="float32"'])
    load_and_validate(path, ["distributed.engine=deepspeed", "distributed.zero_stage=2"])
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
def test_qlora_on_two_processes_under_zero2_and_zero3_follows_one_process(tmp_path):
    from conftest import cli
    from safetensors.torch import load_file

    from runner.storage.rundir import RunDir

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
