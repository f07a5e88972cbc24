"""Preference data (task `preference`): the layouts it reads, what is scored, bad and malformed rows."""

import copy
import importlib.util
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import write
from datasets import Dataset

from plugins.tasks import _chat_templates as chat_templates
from plugins.tasks.preference import Preference, PreferenceOptions
from plugins.tokenizers.trained import Trained, TrainedTokenizerOptions
from runner import DataError, RawSplit, RecipeError

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]


def pairs(n: int, seed: int = 0) -> list[dict]:
    """Generated plain-text pairs whose preferred answer is checkable by a rule: it names the colour
    the prompt asks about, the rejected one names another."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        colour, other = rng.sample(COLOURS, 2)
        thing = rng.choice(["car", "house", "bird", "coat"])
        out.append(
            {
                "prompt": f"The {thing} is {colour}. What colour is the {thing}?",
                "chosen": f"The {thing} is {colour}.",
                "rejected": f"The {thing} is {other}.",
            }
        )
    return out


def as_layouts(row: dict) -> dict[str, dict]:
    """One plain-text pair in every paired layout the task reads."""
    user, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    return {
        "text": row,
        "openai messages": {
            "prompt": [{"role": "user", "content": user}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": rejected,
        },
        "sharegpt messages": {
            "prompt": [{"from": "human", "value": user}],
            "chosen": [{"from": "gpt", "value": chosen}],
            "rejected": [{"from": "gpt", "value": rejected}],
        },
        "ultrafeedback": {
            "chosen": [{"role": "user", "content": user}, {"role": "assistant", "content": chosen}],
            "rejected": [{"role": "user", "content": user}, {"role": "assistant", "content": rejected}],
        },
        "ultrafeedback with prompt": {
            "prompt": user,
            "chosen": [{"role": "user", "content": user}, {"role": "assistant", "content": chosen}],
            "rejected": [{"role": "user", "content": user}, {"role": "assistant", "content": rejected}],
        },
        "hh": {
            "chosen": f"\n\nHuman: {user}\n\nAssistant: {chosen}",
            "rejected": f"\n\nHuman: {user}\n\nAssistant: {rejected}",
        },
    }


@pytest.fixture(scope="module")
def trained_tokenizer():
    texts = [text for row in pairs(300, seed=1) for text in row.values()]
    return Trained(TrainedTokenizerOptions(vocab_size=400)).build(None, lambda: iter(texts))


@pytest.fixture
def tokenizer(trained_tokenizer):
    """A copy for each test: preparing it for a template (markers added) changes it."""
    return copy.deepcopy(trained_tokenizer)


def task_for(tokenizer, **options) -> Preference:
    task = Preference(PreferenceOptions(**options))
    task.prepare_tokenizer(tokenizer)
    return task


def encode(task, tokenizer, rows, max_length=256):
    return [dict(r) for r in task.encode(Dataset.from_list(rows), tokenizer, max_length)]


@pytest.mark.parametrize("template", ["chatml", "alpaca"])
def test_every_layout_reads_to_the_same_encoded_pair(tokenizer, template):
    task = task_for(tokenizer, template=template)
    row = pairs(1, seed=3)[0]
    encoded = {name: encode(task, tokenizer, [layout]) for name, layout in as_layouts(row).items()}
    assert all(len(rows) == 1 for rows in encoded.values()), encoded
    first = encoded["text"][0]
    assert set(first) == {"prompt_ids", "chosen_ids", "rejected_ids", "length"}
    for name, rows in encoded.items():
        assert rows[0] == first, name
    assert first["length"] == len(first["prompt_ids"]) + max(len(first["chosen_ids"]), len(first["rejected_ids"]))
    assert task.notes == []
    for name, layout in as_layouts(row).items():  # what audits compare, and what a trained tokenizer learns from
        assert task.row_text(layout) == f"{row['prompt']}\n{row['chosen']}", name
        assert list(task.training_texts([layout])) == [row["prompt"], row["chosen"], row["rejected"]], name


def test_multi_turn_transcripts_and_conversations_keep_the_earlier_turns_in_the_prompt(tokenizer):
    task = task_for(tokenizer, template="chatml")
    turns = [("user", "The car is red."), ("assistant", "Noted."), ("user", "What colour is the car?")]
    conversation = {
        "prompt": [{"role": role, "content": text} for role, text in turns],
        "chosen": "It is red.",
        "rejected": "It is blue.",
    }
    transcript = "".join(f"\n\n{'Human' if role == 'user' else 'Assistant'}: {text}" for role, text in turns)
    hh = {"chosen": transcript + "\n\nAssistant: It is red.", "rejected": transcript + "\n\nAssistant: It is blue."}
    ultrafeedback = {
        "prompt": "The car is red.",
        "chosen": [*conversation["prompt"], {"role": "assistant", "content": "It is red."}],
        "rejected": [*conversation["prompt"], {"role": "assistant", "content": "It is blue."}],
    }
    expected = encode(task, tokenizer, [conversation])
    assert encode(task, tokenizer, [hh]) == expected and encode(task, tokenizer, [ultrafeedback]) == expected
    assert "noted." in tokenizer.decode(expected[0]["prompt_ids"])


def test_data_source_columns_name_the_task_columns(tokenizer):
    from runner.pipeline.data import _standardize

    task = task_for(tokenizer, template="chatml")
    rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in pairs(3)]
    raw = RawSplit(Dataset.from_list(rows), "pairs.csv")
    renamed = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    standard = _standardize(raw, renamed, task, ("data", "sources", 0), 0)
    assert encode(task, tokenizer, [standard.dataset[0]]) == encode(task, tokenizer, pairs(1))
    with pytest.raises(DataError, match="no column 'chosen'; the task 'preference' needs it"):
        _standardize(raw, {"prompt": "question"}, task, ("data", "sources", 0), 0)


def test_prompts_and_answers_from_a_model(tokenizer, monkeypatch):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    task = task_for(tokenizer, template="chatml", max_new_tokens=4)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_head=2, n_embd=16, n_positions=128))
    rows = pairs(2, seed=6)
    prompts = task.prompts(rows, tokenizer=tokenizer)
    assert [answer for _, answer in prompts] == [r["chosen"] for r in rows]
    assert all(
        prompt.endswith("<|im_start|>assistant\n") and r["prompt"] in prompt
        for (prompt, _), r in zip(prompts, rows, strict=True)
    )
    answers = task.generate(model, tokenizer, [p for p, _ in prompts], max_length=64)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # a few-shot prompt: each shot's prompt answered with its chosen answer, before the row's own prompt
    shot = {"prompt": "The kite is white. What colour is the kite?", "chosen": "White.", "rejected": "Black."}
    (few, _), _ = task.prompts(rows, shots=[shot], tokenizer=tokenizer)
    assert few.index(shot["prompt"]) < few.index("White.<|im_end|>") < few.index(rows[0]["prompt"])
    assert "Black." not in few

    # `finetune generate` answers with a task that generates, whatever its predictions are
    from runner.running import saved

    done = SimpleNamespace(
        task=task,
        model=model,
        tokenizer=tokenizer,
        meta={"max_length": 64},
        recipe=SimpleNamespace(task=task),
        spec=SimpleNamespace(head=task.head),
    )
    monkeypatch.setattr(saved, "load_finished", lambda *a: done)
    (answer,) = saved.predict_run(None, ["Hi"], max_new_tokens=2)
    assert answer["prompt"] == "Hi" and isinstance(answer["response"], str)


def test_only_the_answers_are_scored_and_the_prompt_ends_with_the_generation_prompt(tokenizer):
    task = task_for(tokenizer, template="chatml", system="Answer briefly.")
    row = {
        "prompt": [
            {"role": "user", "content": "The car is red."},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "What colour is the car?"},
        ],
        "chosen": "The car is red.",
        "rejected": "The car is blue.",
    }
    (pair,) = encode(task, tokenizer, [row])
    prompt = chat_templates.render(
        tokenizer,
        chat_templates.CHATML,
        [{"role": "system", "content": "Answer briefly."}, *row["prompt"]],
        generation_prompt=True,
    )
    assert prompt.endswith("<|im_start|>assistant\n")  # the template's generation prompt
    assert pair["prompt_ids"] == tokenizer(prompt)["input_ids"]  # all of it, the earlier answer "Noted." too
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for column, text in (("chosen_ids", "the car is red."), ("rejected_ids", "the car is blue.")):
        ids = pair[column]
        assert ids[-1] == end and end not in ids[:-1]  # the answer and its end of turn, nothing after
        assert tokenizer.decode(ids[:-1]).strip() == text  # nothing of the prompt
        whole = tokenizer(prompt + row[column.removesuffix("_ids")] + "<|im_end|>")["input_ids"]
        assert ids == whole[len(pair["prompt_ids"]) :]
    pieces = task.preview([row], tokenizer, 256)[0]
    trained = "".join(text for text, on in pieces if on)
    assert "the car is red." in trained and "the car is blue." in trained and "noted" not in trained
    labels = [text.strip() for text, on in pieces if not on and text.strip().startswith("[")]
    assert labels == ["[prompt, not trained]", "[chosen, trained]", "[rejected, trained]"]


def test_bad_rows_are_counted_by_reason_and_the_good_kept(tokenizer, tmp_path):
    cache_dir = tmp_path
    task = task_for(tokenizer, template="chatml")
    good = pairs(6, seed=4)
    hh = as_layouts(good[0])["hh"]
    bad = [
        {"prompt": "What colour is the car?", "chosen": "  ", "rejected": "Blue."},
        {"prompt": "What colour is the car?", "chosen": "Red.", "rejected": "Red."},
        {"prompt": "What colour is the car? " * 40, "chosen": "Red.", "rejected": "Blue."},
    ]
    encoded = encode(task, tokenizer, [*good[:3], *bad, *good[3:]], max_length=64)
    assert len(encoded) == 6 and encoded == encode(task, tokenizer, good, max_length=64)
    note = task.notes[0]
    assert note.startswith("3 of 9 pairs dropped: ")
    for reason in (
        "1 with an empty answer",
        "1 with chosen identical to rejected",
        "1 whose prompt alone fills max_length (64 tokens)",
    ):
        assert reason in note, note
    # read back from the encoding cache, the split says again what was dropped
    from runner.pipeline.encoding import encode_splits

    split = {"train": Dataset.from_list([*good[:3], *bad, *good[3:]])}
    for fresh in (True, False):
        task.notes.clear()
        _, cached = encode_splits(task, tokenizer, split, 64, cache_dir)
        assert cached["train"] is not fresh and task.notes and task.notes[0] == note
    # transcripts that part before their last answer cannot be split into a prompt and two answers
    task.notes.clear()
    parted = dict(
        hh, rejected=hh["rejected"].replace("\n\nAssistant:", "\n\nAssistant: Hm.\n\nHuman: Well?\n\nAssistant:")
    )
    assert len(encode(task, tokenizer, [hh, parted])) == 1
    assert task.notes == ["1 of 2 pairs dropped: 1 whose chosen and rejected differ before their last answer"]

    # an over-long pair keeps its prompt whole and has its answers cut, and says so
    task.notes.clear()
    long = dict(good[0], chosen="Red. " + "It is red. " * 30, rejected="Blue.")
    full = encode(task, tokenizer, [long], max_length=1000)[0]
    cut = encode(task, tokenizer, [long], max_length=len(full["prompt_ids"]) + 5)[0]
    assert cut["prompt_ids"] == full["prompt_ids"] and cut["chosen_ids"] == full["chosen_ids"][:5]
    assert cut["length"] == len(full["prompt_ids"]) + 5
    limit = len(full["prompt_ids"]) + 5
    assert task.notes == [
        f"1 of 1 pairs cut to max_length ({limit} tokens): the prompt kept whole, the answers shortened"
    ]

    with pytest.raises(DataError, match="no pair is left to learn from: 1 with chosen identical to rejected"):
        encode(task, tokenizer, [bad[1]])


def test_a_prompt_end_that_merges_into_the_answer_is_noted(tokenizer):
    # 'plain' ends its generation prompt with a space, which a byte-level tokenizer joins to the next word
    task = task_for(tokenizer, template="plain")
    (pair,) = encode(task, tokenizer, pairs(1))
    prompt = chat_templates.render(
        tokenizer, chat_templates.PLAIN, [{"role": "user", "content": pairs(1)[0]["prompt"]}], True
    )
    assert prompt.endswith("Assistant: ") and pair["prompt_ids"] == tokenizer(prompt)["input_ids"][:-1]
    assert tokenizer.decode(pair["chosen_ids"]).startswith(" ")  # the space begins the answer's first token
    assert task.notes and task.notes[0].startswith(
        "1 of 1 pairs: the prompt's last tokens merge with the answer's first (e.g. ' ')"
    )


@pytest.mark.parametrize(
    ("options", "row", "message"),
    [
        (
            {},
            {"prompt": "Hi", "chosen": 3, "rejected": "No"},
            "'chosen' and 'rejected' must both be text or both lists",
        ),
        (
            {"format": "text"},
            {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "a", "rejected": "b"},
            "'prompt' must be text, not list",
        ),
        (
            {},
            {"prompt": [{"role": "robot", "content": "Hi"}], "chosen": "a", "rejected": "b"},
            "'prompt' turn 1: unknown role 'robot'",
        ),
        (
            {},
            {
                "prompt": [{"role": "user", "content": "Hi"}],
                "chosen": [{"role": "user", "content": "a"}],
                "rejected": "b",
            },
            "'chosen' turn 1: a user turn",
        ),
        (
            {},
            {
                "prompt": "Hello",
                "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "b"}],
            },
            "is not the conversation's first user turn",
        ),
        (
            {},
            {"chosen": "Human: hi Assistant: a", "rejected": "Human: hi Assistant: b"},
            "no '\\n\\nAssistant:' marker",
        ),
        (
            {"format": "unpaired"},
            {"prompt": "Hi", "completion": "a", "label": "yes"},
            "'label' must be true (desirable) or false",
        ),
    ],
)
def test_malformed_rows_raise_a_data_error_naming_the_row(options, row, message):
    task = Preference(PreferenceOptions(**options))
    # the row as the pipeline hands it on: with its place in the file (Arrow holds one type a column,
    # so the malformed row comes alone)
    raw = RawSplit(Dataset.from_list([{**row, "_row": 41}]), "data/pairs.jsonl", "line")
    with pytest.raises(DataError) as caught:
        task.fit({"train": [raw]})
    assert caught.value.message.startswith("data/pairs.jsonl, line 42: "), caught.value.message
    assert message in caught.value.message


def test_unpaired_rows_encode_for_kto_and_batch_with_their_labels(tokenizer):
    task = task_for(tokenizer, template="chatml", format="unpaired")
    assert task.columns == ("prompt", "completion", "label") and not task.paired
    rows = [
        {"prompt": "What colour is the car?", "completion": "Red.", "label": True},
        {"prompt": "What colour is the car?", "completion": "Blue.", "label": False},
        {"prompt": "What colour is the car?", "completion": " ", "label": False},
    ]
    encoded = encode(task, tokenizer, rows)
    assert [set(r) for r in encoded] == [{"prompt_ids", "completion_ids", "label", "length"}] * 2
    assert [r["label"] for r in encoded] == [True, False]
    assert task.notes == ["1 of 3 rows dropped: 1 with an empty answer"]
    batch = task.collator(tokenizer, None)(encoded)
    assert batch["label"].tolist() == [True, False]
    for i, row in enumerate(encoded):
        assert batch["completion_mask"][i].sum() == len(row["completion_ids"])


def test_the_collator_batches_chosen_then_rejected_masking_all_but_the_answers(tokenizer):
    task = task_for(tokenizer, template="chatml")
    encoded = encode(task, tokenizer, pairs(3, seed=5))
    batch = task.collator(tokenizer, None)(encoded)
    assert batch["input_ids"].shape[0] == 6
    for i, row in enumerate(encoded):
        for half, answer in ((i, row["chosen_ids"]), (i + 3, row["rejected_ids"])):
            n, m = len(row["prompt_ids"]), len(answer)
            assert batch["input_ids"][half, : n + m].tolist() == row["prompt_ids"] + answer
            assert batch["completion_mask"][half].tolist() == [0] * n + [1] * m + [0] * (
                batch["input_ids"].shape[1] - n - m
            )
            assert batch["attention_mask"][half].sum() == n + m
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    padded = task.collator(tokenizer, 64)(encoded)
    assert padded["input_ids"].shape == (6, 64)


RECIPE = """
[run]
seed = 1

[[data.sources]]
type = "inline"
rows = [
  {{ prompt = "The car is red. What colour is the car?", chosen = "Red.", rejected = "Blue." }},
  {{ prompt = "The bird is blue. What colour is the bird?", chosen = "Blue.", rejected = "Red." }},
]

[tokenizer]
type = "trained"
vocab_size = 300
max_length = 64

[model]
type = "config"
architecture = "gpt2"
config = {{ n_layer = 1, n_head = 2, n_embd = 32, n_positions = 64 }}

[training]
type = "dpo"

[task]
type = "preference"
{task}
"""


def test_a_preference_recipe_validates_and_an_unknown_option_is_a_recipe_error(tmp_path):
    from runner import load_recipe

    recipe = load_recipe(write(tmp_path / "ok.toml", RECIPE.format(task='format = "text"\ntemplate = "chatml"')))
    assert recipe.task.name == "preference" and recipe.task.options.format == "text"
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path / "typo.toml", RECIPE.format(task='formt = "text"')))
    assert "task.formt" in str(caught.value) and "did you mean 'format'" in str(caught.value)
    with pytest.raises(RecipeError, match="task.format"):
        load_recipe(write(tmp_path / "bad.toml", RECIPE.format(task='format = "pairs"')))


def test_unpaired_rows_need_a_trainer_that_takes_them(tmp_path):
    from runner import load_recipe

    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path / "kto.toml", RECIPE.format(task='format = "unpaired"')))
    assert "task.format: format 'unpaired'" in str(caught.value) and "training.type = 'dpo'" in str(caught.value)


def test_a_missing_trl_is_a_recipe_error_naming_the_extra(tmp_path, monkeypatch):
    from runner import load_recipe

    path = write(tmp_path / "r.toml", RECIPE.format(task=""))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert "task.type" in str(caught.value) and "pip install 'finetune-runner[preference]'" in str(caught.value)


def test_validating_a_preference_recipe_imports_neither_trl_nor_torch(tmp_path):
    path = write(tmp_path / "r.toml", RECIPE.format(task=""))
    code = (
        f"import sys; from runner import load_recipe; load_recipe({str(path)!r}); "
        "print(sorted({'trl', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
