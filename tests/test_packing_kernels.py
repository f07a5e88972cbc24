"""Packing keeps samples apart with every attention kernel that runs here, or is refused.

A sample's per-token losses inside a packed row (built by the real `pack()` and PackedCollator)
equal its losses alone; the build-time probe (`mixing`) finds nothing where they do and a lot where
an architecture mixes (OPT); a recipe that packs on a known mixing architecture is a recipe error;
and a run whose model mixes stops before it trains.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_recipe, save_tiny_hub_model, tiny_recipe, with_pretrained, write

from runner.errors import FinetuneError

VOCAB = 64
SMALL = dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64)
CONFIGS = {
    "llama": dict(SMALL, num_key_value_heads=1, max_position_embeddings=64),
    "qwen2": dict(SMALL, num_key_value_heads=1, max_position_embeddings=64),
    "gpt2": dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "opt": dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, ffn_dim=64, word_embed_proj_dim=32),
}
# FlexAttention runs forward on CPU (compiled: seconds, hence `slow`); gpt2 does not offer it.
CASES = [
    *[(arch, kernel) for arch in ("llama", "qwen2", "gpt2") for kernel in ("eager", "sdpa")],
    *[pytest.param(arch, "flex_attention", marks=pytest.mark.slow) for arch in ("llama", "qwen2")],
]


def tiny(architecture: str, kernel: str | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    if kernel == "flex_attention":
        # Compiled afresh for each test: torch 2.13's CPU code for FlexAttention fails to compile
        # once a recompilation makes the batch size dynamic (an inductor bug, not a mask problem).
        torch._dynamo.reset()

    config = AutoConfig.for_model(
        architecture, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, **CONFIGS[architecture]
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=kernel).eval()


def token_losses(model, batch) -> torch.Tensor:
    """The loss of every supervised token, in order (what the mean loss averages)."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    return -logprobs[keep].gather(1, labels[keep][:, None]).squeeze(1)


@pytest.mark.parametrize(("architecture", "kernel"), CASES)
def test_a_samples_loss_alone_equals_its_loss_inside_a_packed_row(architecture, kernel):
    from datasets import Dataset

    from runner.pipeline.packing import pack
    from runner.toolkit.collate import PackedCollator

    model = tiny(architecture, kernel)
    generator = torch.Generator().manual_seed(0)
    samples = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in (9, 4, 13, 6)]
    rows = [{"input_ids": ids, "labels": ids, "length": len(ids)} for ids in samples]
    packed = pack(Dataset.from_list(rows), max_length=32)
    assert len(packed) == 1 and packed[0]["length"] == 32  # all four in one row
    batch = PackedCollator(pad_token_id=0)([packed[0]])

    inside = token_losses(model, batch)
    alone = torch.cat(
        [token_losses(model, {"input_ids": torch.tensor([i]), "labels": torch.tensor([i])}) for i in samples]
    )
    assert inside.shape == alone.shape == (32 - 4,)  # every sample's first token predicts nothing
    assert torch.allclose(inside, alone, atol=1e-5), float((inside - alone).abs().max())
    with torch.no_grad():  # and the loss the trainer reads is their mean
        assert torch.allclose(model(**batch).loss, alone.mean(), atol=1e-5)


@pytest.mark.parametrize(("architecture", "kernel"), CASES)
def test_the_probe_finds_no_mixing_where_samples_are_kept_apart(architecture, kernel):
    from runner.pipeline.packing import check_packing, mixing

    model = tiny(architecture, kernel).train()
    state = torch.random.get_rng_state()
    assert mixing(model) == 0.0  # the other sample's attention weights are exactly 0
    assert model.training  # the mode it was in
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG untouched
    assert check_packing(model) == 0.0


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_the_probe_finds_opt_mixing_packed_samples(kernel):
    from runner.pipeline.packing import check_packing, mixing, tolerance

    model = tiny("opt", kernel)
    assert tolerance(model) == 1e-3
    assert mixing(model) > 0.05  # 50 times the tolerance
    model.to(torch.bfloat16)
    assert tolerance(model) == 4 * torch.finfo(torch.bfloat16).eps
    assert mixing(model) > 2 * tolerance(model)  # found in low precision too
    with pytest.raises(FinetuneError) as err:
        check_packing(model)
    assert "the opt model" in err.value.message and f"'{kernel}' attention" in err.value.message
    assert "task.packing = false" in err.value.hint


@pytest.mark.filterwarnings("ignore:Position ids are not supported")
def test_the_probe_refuses_prompt_tuning_which_puts_its_tokens_once_a_row():
    from peft import PromptTuningConfig, get_peft_model

    from runner.pipeline.packing import check_packing

    model = get_peft_model(tiny("llama"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with pytest.raises(FinetuneError) as err:
        check_packing(model)
    assert "mix samples" in err.value.message and "virtual tokens" in err.value.hint


def test_packing_on_a_mixing_architecture_is_a_recipe_error(tmp_path):
    from runner import load_recipe
    from runner.errors import RecipeError

    path = write(tmp_path / "r.toml", RECIPE.format(architecture="opt", config=OPT_CONFIG, task=TASK))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    [issue] = err.value.issues
    assert issue.render().startswith(f"{path}:") and " task.packing: packing would mix samples" in issue.render()
    assert "opt architecture" in issue.message and "task.packing = false" in issue.hint
    load_recipe(path, ["task.packing=false"])  # the same model without packing is fine
    load_recipe(write(tmp_path / "ok.toml", RECIPE.format(architecture="llama", config=LLAMA_CONFIG, task=TASK)))


def test_packing_with_virtual_tokens_is_a_recipe_error(tmp_path, local_opt):
    from runner import load_recipe
    from runner.errors import RecipeError

    path = write(tmp_path / "r.toml", pretrained_recipe(local_opt))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["strategy.type=prompt_tuning"])
    assert [i.key for i in err.value.issues] == [("task", "packing")]
    assert "virtual tokens" in err.value.issues[0].message


def test_flex_attention_cannot_train_without_cuda(monkeypatch):
    from runner.pipeline.model_checks import check_attention_kernel as check_kernel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for kernel in (None, "eager", "sdpa", "flash_attention_2"):
        check_kernel(kernel)  # flash_attention_2 is refused by transformers itself, with its reason
    with pytest.raises(FinetuneError) as err:
        check_kernel("flex_attention")
    assert "backward" in err.value.message and "sdpa" in err.value.hint


def test_a_run_whose_model_mixes_packed_samples_stops_before_training(tmp_path, local_opt, monkeypatch):
    """A pretrained OPT: its architecture is known only once it is built, so the probe refuses it."""
    from plugins.trainers.hf import HF

    def fit(self, job):
        raise AssertionError("trained")

    monkeypatch.setattr(HF, "fit", fit)
    path = write(tmp_path / "r.toml", pretrained_recipe(local_opt))
    with pytest.raises(FinetuneError) as err:
        run_recipe(path, tmp_path / "run")
    assert "would mix samples" in err.value.message and "the opt model" in err.value.message
    assert "task.packing = false" in err.value.hint


def test_a_packing_run_on_a_kept_apart_model_trains(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml", rows=60, epochs=1)
    text = path.read_text().replace('type = "classification"', TASK).replace("rows = 60", 'rows = 60\nkind = "text"')
    result = run_recipe(write(path, text), tmp_path / "run")
    assert result.global_step > 0


TASK = 'type = "causal_lm"\npacking = true'
OPT_CONFIG = "{ num_hidden_layers = 1, num_attention_heads = 2, hidden_size = 32, word_embed_proj_dim = 32 }"
LLAMA_CONFIG = "{ num_hidden_layers = 1, num_attention_heads = 2, hidden_size = 32, intermediate_size = 64 }"
RECIPE = """
[[data.sources]]
type = "synthetic"
kind = "text"
rows = 60

[tokenizer]
type = "trained"
vocab_size = 300
max_length = 32

[model]
type = "config"
architecture = "{architecture}"
config = {config}

[task]
{task}

[training]
epochs = 1
"""


def pretrained_recipe(model_dir) -> str:
    return with_pretrained(RECIPE.format(architecture="opt", config="{}", task=TASK), model_dir)


@pytest.fixture(scope="module")
def local_opt(tmp_path_factory):
    """A tiny OPT causal LM and its tokenizer, saved as a Hub repository holds them."""
    from transformers import OPTConfig, OPTForCausalLM

    def opt(vocab_size):
        return OPTForCausalLM(OPTConfig(**CONFIGS["opt"], vocab_size=vocab_size, max_position_embeddings=64))

    return save_tiny_hub_model(tmp_path_factory.mktemp("hub") / "tiny-opt", opt, rows=200)
