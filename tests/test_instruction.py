"""Instruction tuning: what is masked, templates, generation, packing."""

import json
import random

import pytest
import torch
from conftest import cli, run_recipe, write

from plugins.data.synthetic import as_chat, as_instruction, generate
from plugins.tasks.instruction import Instruction, InstructionOptions
from plugins.tokenizers.trained import Trained, TrainedTokenizerOptions

ROWS = [as_instruction(r, random.Random(0)) for r in generate(200, 0)]
CHATS = [as_chat(r, random.Random(1)) for r in generate(200, 1)]

RECIPE = """
[run]
seed = 3
threads = 1

[[data.sources]]
type = "synthetic"
kind = "{kind}"
rows = {rows}

[tokenizer]
type = "trained"
vocab_size = 500
max_length = 160

[model]
type = "config"
architecture = "gpt2"
config = {{ n_layer = 1, n_head = 2, n_embd = 32, n_positions = 160 }}

[task]
type = "instruction"
format = "{format}"
template = "{template}"

[training]
learning_rate = 3e-3
batch_size = 16
epochs = 1
log_every = 5
best_metric = "perplexity"
"""


def task_and_tokenizer(**options):
    task = Instruction(InstructionOptions(**options))
    rows = CHATS if options.get("format") == "chat" else ROWS
    tokenizer = Trained(TrainedTokenizerOptions(vocab_size=400)).build(None, lambda: task.training_texts(rows))
    task.prepare_tokenizer(tokenizer)
    return task, tokenizer


def split_by_label(task, tokenizer, row, max_length=256):
    ids, labels, _ = task.tokens(row, tokenizer, max_length)
    trained = [t for t, label in zip(ids, labels, strict=True) if label != -100]
    masked = [t for t, label in zip(ids, labels, strict=True) if label == -100]
    return tokenizer.decode(masked), tokenizer.decode(trained)


def test_alpaca_masks_exactly_the_prompt_and_trains_the_response_and_eos():
    task, tokenizer = task_and_tokenizer()
    row = {"instruction": "What is the sentiment here?", "input": "the pizza was great", "output": "positive"}
    masked, trained = split_by_label(task, tokenizer, row)
    assert trained == "positive[EOS]"  # the answer and the end-of-sequence token: the model learns to stop
    assert (
        masked.lstrip()
        == (
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nwhat is the sentiment here?\n\n### Input:\nthe pizza was great\n\n"
            "### Response:\n"
        ).lower()
    )  # the trained tokenizer lower-cases
    task.options.train_on_inputs = True
    _, everything = split_by_label(task, tokenizer, row)
    assert everything.lstrip().startswith("below is an instruction") and everything.endswith("positive[EOS]")


@pytest.mark.parametrize("template", ["chatml", "plain", "alpaca"])
def test_every_assistant_turn_of_a_conversation_is_trained(template):
    task, tokenizer = task_and_tokenizer(format="chat", template=template)
    row = {
        "messages": [
            {"role": "user", "content": "Classify: the bus was okay"},
            {"role": "assistant", "content": "neutral"},
            {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "It has no strong feeling about the bus."},
        ]
    }
    text, spans = task.render(row, tokenizer)
    assert [text[a:b] for a, b in spans][0].startswith("neutral")
    assert [text[a:b] for a, b in spans][1].startswith("It has no strong feeling about the bus.")
    _, trained = split_by_label(task, tokenizer, row)
    assert "neutral" in trained and "no strong feeling" in trained.lower() and "why" not in trained.lower()
    end = "<|im_end|>" if template == "chatml" else "[EOS]"
    assert trained.count(end) == 2  # both turns end, and both ends are learnt
    ids, labels, _ = task.tokens(row, tokenizer, 1000)
    pieces = [tokenizer.decode([t]) for t, label in zip(ids, labels, strict=True) if label != -100]
    ends = [i for i, piece in enumerate(pieces) if piece == end]
    assert ends[-1] == len(pieces) - 1 and pieces[ends[0] + 1].strip()  # nothing trained after an end marker


def test_the_newline_a_template_writes_after_the_end_marker_is_not_trained():
    # the usual ChatML template closes every turn with "<|im_end|>\n"
    usual = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}{{ '\\n' }}{{ message['content'] }}"
        "<|im_end|>{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
    )
    task, tokenizer = task_and_tokenizer(format="chat", template="chatml")
    task.template_source = usual
    row = {"messages": [{"role": "user", "content": "Classify: fine"}, {"role": "assistant", "content": "neutral"}]}
    text, spans = task.render(row, tokenizer)
    assert text.endswith("<|im_end|>\n") and text[spans[0][0] : spans[0][1]] == "neutral<|im_end|>"


def test_answers_stop_at_the_end_of_turn_of_a_template_taken_from_the_tokenizer():
    """A run started from an earlier run's tokenizer (template "tokenizer") ends answers at the
    saved ChatML template's <|im_end|> as the run that trained it did, not only at EOS."""
    named, tokenizer = task_and_tokenizer(format="chat", template="chatml")
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in named.stop_tokens(tokenizer)
    taken = Instruction(InstructionOptions(format="chat", template="tokenizer"))
    taken.prepare_tokenizer(tokenizer)
    assert sorted(taken.stop_tokens(tokenizer)) == sorted(named.stop_tokens(tokenizer))
    plain = Instruction(InstructionOptions(format="chat", template="alpaca"))
    assert plain.stop_tokens(tokenizer) == [tokenizer.eos_token_id]


def test_a_changed_tokenizer_template_encodes_the_rows_again(tmp_path):
    from datasets import Dataset

    from runner.pipeline.encoding import encode_splits

    _, tokenizer = task_and_tokenizer(format="chat", template="chatml")
    task = Instruction(InstructionOptions(format="chat", template="tokenizer"))
    task.prepare_tokenizer(tokenizer)
    splits = {"train": Dataset.from_list(CHATS[:20])}
    first, cached = encode_splits(task, tokenizer, splits, 256, tmp_path)
    assert not cached["train"]
    # the same tokenizer with another template (a new revision of a model's tokenizer_config.json)
    tokenizer.chat_template = "conversation:" + tokenizer.chat_template
    task = Instruction(InstructionOptions(format="chat", template="tokenizer"))
    task.prepare_tokenizer(tokenizer)
    second, cached = encode_splits(task, tokenizer, splits, 256, tmp_path)
    assert not cached["train"], "rows formatted with the old template were read from the cache"
    assert list(second["train"]["input_ids"]) != list(first["train"]["input_ids"])


def test_rows_without_a_response_token_after_truncation(tmp_path):
    task, tokenizer = task_and_tokenizer()
    from datasets import Dataset

    long = {"instruction": "Classify.", "input": "the service was fine " * 30, "output": "neutral"}
    rows = Dataset.from_list([*ROWS[:10], long, long])
    fits = max(len(task.tokens(row, tokenizer, 10_000)[0]) for row in ROWS[:10])
    encoded = task.encode(rows, tokenizer, max_length=fits)  # the long inputs leave no room for the answer
    assert len(encoded) == 10 and "2 of 12 rows have no response token after truncation: dropped" in task.notes[0]
    with pytest.raises(Exception, match="no row has a response token left"):
        task.encode(rows, tokenizer, max_length=10)


def test_a_recipe_template_renders_in_a_sandbox(tmp_path, capsys):
    escape = "{% for m in messages %}{{ m.__class__.__mro__ }}{{ m['content'] }}{% endfor %}"
    recipe = write(tmp_path / "r.toml", RECIPE.format(kind="chat", rows=100, format="chat", template="plain"))
    recipe.write_text(recipe.read_text().replace('template = "plain"', f"template = {json.dumps(escape)}"))
    assert cli("run", recipe, "--output", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "the chat template failed to render: SecurityError" in err and "__class__" in err

    recipe.write_text(recipe.read_text().replace(json.dumps(escape), '"{% for m in messages %}"'))
    assert cli("validate", recipe) == 2
    assert "template syntax error" in capsys.readouterr().out


def test_instruction_run_lowers_validation_loss_saves_the_template_and_generates(tmp_path, capsys):
    recipe = write(tmp_path / "r.toml", RECIPE.format(kind="chat", rows=1200, format="chat", template="chatml"))
    extra = [
        'task.sample_prompts=["Classify the sentiment of this post.\\nthe pizza was great"]',
        "model.config={ n_layer = 2, n_head = 4, n_embd = 64, n_positions = 160 }",
        "training.eval_on_start=true",
        "training.epochs=2",
    ]
    result = run_recipe(recipe, tmp_path / "run", extra)
    evals = [r for r in result.run_dir.read_metrics_log() if r["split"] == "validation"]
    assert evals[0]["step"] == 0 and evals[-1]["loss"] < evals[0]["loss"] - 1.0
    # answering prompts (base model, its few-shot prompts, the tuned model) says how far it got
    shown = capsys.readouterr().out.splitlines()
    for who in ("base model", "base model, 3-shot", "fine-tuned model"):
        counts = [line.rsplit(" ", 1)[1] for line in shown if line.strip().startswith(f"{who}, test: answering ")]
        assert counts and counts[0] == "0/100" and counts[-1] == "100/100", (who, counts)

    saved = json.loads((result.run_dir.model / "tokenizer_config.json").read_text())
    template = saved.get("chat_template") or (result.run_dir.model / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template
    sample = json.loads((result.run_dir.path / "samples.jsonl").read_text().splitlines()[0])
    assert sample["response"] in {"positive", "negative", "neutral"}  # learnt the format, and to stop
    # the untouched model's answer to the same prompt, measured before training, is kept beside it
    assert sample["before"] not in {"positive", "negative", "neutral"}
    html = (result.run_dir.path / "report.html").read_text(encoding="utf-8")
    assert "before training (base model)" in html and f"<pre>{sample['response']}</pre>" in html

    assert cli("generate", result.run_dir.path, "--prompt", "Is this post positive, negative or neutral?\nugh") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].split(": ", 1)[-1] in {"positive", "negative", "neutral"}


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_packed_loss_equals_padded_loss(architecture):
    from datasets import Dataset

    from runner.pipeline.packing import pack
    from runner.testing import tiny_model
    from runner.toolkit.collate import PackedCollator, PadCollator

    model = tiny_model(architecture, "causal_lm").eval()
    generator = torch.Generator().manual_seed(0)
    rows = []
    for length in (5, 11, 3, 8):
        ids = torch.randint(3, 60, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100, -100, *ids[2:]], "length": length})  # 2 prompt tokens
    padded = PadCollator(pad_token_id=0, sequence_labels=True)(rows)
    packed_rows = pack(Dataset.from_list(rows), max_length=32)
    assert len(packed_rows) == 1 and packed_rows[0]["length"] == 27
    packed = PackedCollator(pad_token_id=0)([packed_rows[0]])
    with torch.no_grad():
        unpacked_loss = model(**padded).loss
        packed_loss = model(**packed).loss
        # the samples really are kept apart: changing one leaves the others' logits alone
        changed = dict(packed, input_ids=packed["input_ids"].clone())
        changed["input_ids"][0, :5] = 7
        a, b = model(**packed).logits[0, 5:], model(**changed).logits[0, 5:]
    assert torch.allclose(packed_loss, unpacked_loss, atol=1e-5)
    assert torch.allclose(a, b, atol=1e-5)


def test_best_fit_packs_rows_nearly_full():
    from runner.pipeline.packing import best_fit

    lengths = [7, 3, 5, 9, 2, 6, 4, 8, 1, 10, 5, 5]
    bins = best_fit(lengths, capacity=10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # every sample, once
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 7  # 65 tokens: 7 rows of 10 is the least possible


def test_packing_trains_on_fewer_fuller_rows(tmp_path):
    recipe = write(tmp_path / "r.toml", RECIPE.format(kind="instruction", rows=600, format="alpaca", template="plain"))
    padded = run_recipe(recipe, tmp_path / "padded", ["training.epochs=2"])
    packed = run_recipe(recipe, tmp_path / "packed", ["training.epochs=2", "task.packing=true"])
    assert packed.global_step < padded.global_step / 2  # several samples in every row: fewer steps an epoch
    # as many optimizer steps as the padded run: as good a model, from more samples a step
    longer = run_recipe(recipe, tmp_path / "longer", [f"training.max_steps={padded.global_step}", "task.packing=true"])
    ratio = longer.metrics["validation"]["perplexity"] / padded.metrics["validation"]["perplexity"]
    assert ratio < 1.1, ratio
