"""Conversation formats of the instruction task: openai and sharegpt rows, role names, per-turn
training flags, and the data errors of bad rows."""

import json
import random

import pytest
from conftest import cli, run_recipe, write

from plugins.data.synthetic import as_chat, generate
from plugins.tasks.instruction import Instruction, InstructionOptions
from plugins.tokenizers.trained import Trained, TrainedTokenizerOptions
from runner import DataError

CHATS = [as_chat(r, random.Random(1)) for r in generate(200, 1)]
SHAREGPT_NAMES = {"system": "system", "user": "human", "assistant": "gpt"}
# Lower case: the trained tokenizer lower-cases, so decoded tokens read back as written here.
TALK = [
    {"role": "user", "content": "classify: the bus was okay"},
    {"role": "assistant", "content": "neutral"},
    {"role": "user", "content": "why?"},
    {"role": "assistant", "content": "it has no strong feeling about the bus."},
]


def to_sharegpt(row: dict, names: dict | None = None, column: str = "conversations") -> dict:
    """An openai row as ShareGPT turns {from, value}, any other keys of a turn kept."""
    names = names or SHAREGPT_NAMES
    turns = [{"from": names[m["role"]], "value": m["content"], **_extra(m)} for m in row["messages"]]
    return {column: turns}


def _extra(message: dict) -> dict:
    return {k: v for k, v in message.items() if k not in ("role", "content")}


def flagged(turn: int, flag: dict) -> dict:
    """TALK as an openai row, with `flag` on turn `turn`."""
    return {"messages": [{**m, **flag} if n == turn else m for n, m in enumerate(TALK)]}


@pytest.fixture(scope="module")
def tokenizer():
    task = Instruction(InstructionOptions(format="openai", template="chatml"))
    rows = [*CHATS, {"messages": TALK}]
    tok = Trained(TrainedTokenizerOptions(vocab_size=400)).build(None, lambda: task.training_texts(rows))
    task.prepare_tokenizer(tok)
    return tok


def task_for(tokenizer, **options):
    task = Instruction(InstructionOptions(template=options.pop("template", "chatml"), **options))
    task.prepare_tokenizer(tokenizer)  # the markers are in the vocabulary already: nothing is added
    return task


def encode(task, tokenizer, rows):
    from datasets import Dataset

    encoded = task.encode(Dataset.from_list(rows), tokenizer, max_length=512)
    return encoded["input_ids"], encoded["labels"]


# -- the same conversation in every format --------------------------------------------------------
@pytest.mark.parametrize("template", ["chatml", "alpaca", "plain"])
def test_sharegpt_and_openai_rows_encode_to_the_same_ids_and_labels(tokenizer, template):
    rows = CHATS[:20] + [{"messages": [{"role": "system", "content": "be brief."}, *TALK]}]
    openai = encode(task_for(tokenizer, format="openai", template=template), tokenizer, rows)
    sharegpt = encode(
        task_for(tokenizer, format="sharegpt", template=template), tokenizer, list(map(to_sharegpt, rows))
    )
    assert sharegpt == openai
    labels = [x for row in openai[1] for x in row]
    assert -100 in labels and any(x != -100 for x in labels)  # a real mask, not all or nothing
    chat = task_for(tokenizer, format="chat", template=template)  # the older name
    assert chat.options.format == "openai" and encode(chat, tokenizer, rows) == openai


def test_custom_role_names_and_column(tokenizer):
    rows = CHATS[:10]
    openai = encode(task_for(tokenizer, format="openai"), tokenizer, rows)
    names = {"system": "sys", "user": "customer", "assistant": "agent"}
    renamed = [to_sharegpt(row, names, column="dialog") for row in rows]
    task = task_for(tokenizer, format="sharegpt", column="dialog", roles={v: k for k, v in names.items()})
    assert task.columns == ("dialog",)
    assert encode(task, tokenizer, renamed) == openai
    # the default names stay known beside the mapped ones: human and gpt still read
    assert encode(task, tokenizer, [to_sharegpt(row, column="dialog") for row in rows]) == openai
    bot = [{"messages": [{**m, "role": "bot"} if m["role"] == "assistant" else m for m in r["messages"]]} for r in rows]
    assert encode(task_for(tokenizer, format="openai", roles={"bot": "assistant"}), tokenizer, bot) == openai


def test_a_role_mapped_to_no_role_is_a_recipe_error_at_its_key(tmp_path, capsys):
    recipe = write(
        tmp_path / "r.toml",
        """
        [[data.sources]]
        type = "synthetic"
        kind = "chat"

        [model]
        type = "config"
        architecture = "gpt2"

        [tokenizer]
        type = "trained"

        [task]
        type = "instruction"
        format = "sharegpt"
        roles = { human = "user", gpt = "bot" }
        """,
    )
    assert cli("validate", recipe) == 2
    out = capsys.readouterr().out
    assert "r.toml:15:" in out and "task.roles.gpt:" in out and "'assistant'" in out and "bot" in out


# -- per-turn training flags ----------------------------------------------------------------------
def trained_positions(labels) -> set[int]:
    return {i for i, label in enumerate(labels) if label != -100}


@pytest.mark.parametrize(
    ("format", "flag"),
    [
        ("openai", {"weight": 0}),
        ("openai", {"train": False}),
        ("sharegpt", {"weight": 0}),
        ("sharegpt", {"train": False}),
    ],
)
def test_an_assistant_turn_marked_not_trained_is_masked_exactly(tokenizer, format, flag):
    plain_row, row = {"messages": TALK}, flagged(1, flag)
    if format == "sharegpt":
        plain_row, row = to_sharegpt(plain_row), to_sharegpt(row)
    task = task_for(tokenizer, format=format)
    (ids,), (labels,) = encode(task, tokenizer, [plain_row])
    (flag_ids,), (flag_labels,) = encode(task, tokenizer, [row])
    assert flag_ids == ids  # a flag changes what is trained, never the text
    dropped = trained_positions(labels) - trained_positions(flag_labels)
    assert trained_positions(flag_labels) <= trained_positions(labels)
    assert sorted(dropped) == list(range(min(dropped), max(dropped) + 1))  # one run of tokens
    assert tokenizer.decode([ids[i] for i in sorted(dropped)]) == "neutral<|im_end|>"  # the turn and its end
    assert tokenizer.decode([ids[i] for i in sorted(trained_positions(flag_labels))]).startswith("it has no strong")

    # train_on_inputs: everything is trained but the marked turn, the very same tokens
    task.options.train_on_inputs = True
    (_,), (inputs_labels,) = encode(task, tokenizer, [row])
    assert set(range(len(ids))) - trained_positions(inputs_labels) == dropped


def test_a_user_turn_marked_trained_is_trained(tokenizer):
    task = task_for(tokenizer, format="openai")
    (ids,), (labels,) = encode(task, tokenizer, [{"messages": TALK}])
    (_,), (flag_labels,) = encode(task, tokenizer, [flagged(2, {"train": True})])
    added = sorted(trained_positions(flag_labels) - trained_positions(labels))
    assert trained_positions(labels) < trained_positions(flag_labels)
    # all that the turn adds: the newline that opens it, its marker and role, its text, its end
    assert tokenizer.decode([ids[i] for i in added]).split() == ["<|im_start|>", "user", "why?<|im_end|>"]
    # with train_on_inputs every turn is trained already: a user turn marked weight 0 is not
    task.options.train_on_inputs = True
    (_,), (all_labels,) = encode(task, tokenizer, [{"messages": TALK}])
    (_,), (less_labels,) = encode(task, tokenizer, [flagged(2, {"weight": 0})])
    assert trained_positions(all_labels) == set(range(len(ids)))
    assert sorted(trained_positions(all_labels) - trained_positions(less_labels)) == added


# -- few-shot rows and audits read every format ------------------------------------------------------
def test_prompts_and_row_text_read_rows_of_any_format(tokenizer):
    task = task_for(tokenizer, format="sharegpt", column="dialog", roles={"agent": "assistant"})
    row = {"dialog": [{"from": "human", "value": "classify: fine"}, {"from": "agent", "value": "neutral"}]}
    shots = [to_sharegpt(CHATS[3]), CHATS[4]]  # few-shot rows from sources of other formats
    ((prompt, reference),) = task.prompts([row], shots=shots, tokenizer=tokenizer)
    assert reference == "neutral" and prompt.endswith("classify: fine<|im_end|>\n<|im_start|>assistant\n")
    assert CHATS[3]["messages"][3]["content"] in prompt and CHATS[4]["messages"][3]["content"] in prompt
    system = {"dialog": [{"from": "system", "value": "S"}, *row["dialog"]]}
    assert task.row_text(system) == "classify: fine\nneutral"
    assert task.row_text(to_sharegpt({"messages": TALK})) == "\n".join(m["content"] for m in TALK)


# -- bad rows ------------------------------------------------------------------------------------------
GOOD = to_sharegpt({"messages": TALK[:2]})
BAD = {
    "unknown role": (
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]},
        "turn 2: unknown role 'bot' (known: system, human, user, gpt, assistant",
    ),
    "empty turn": (
        {"conversations": [{"from": "human", "value": " \n "}, {"from": "gpt", "value": "yo"}]},
        "turn 1: 'value' is empty",
    ),
    "no assistant turn": (
        {"conversations": [{"from": "system", "value": "be kind"}, {"from": "human", "value": "hi"}]},
        "no assistant turn (from gpt, assistant): nothing to learn from",
    ),
    "value not text": (
        {"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "yo"}]},
        "turn 1: 'value' must be text, not int",
    ),
    "no value": (
        {"conversations": [{"from": "human"}, {"from": "gpt", "value": "yo"}]},
        "turn 1: 'value' must be text",
    ),
    "not a list": ({"conversations": "hi"}, "'conversations' must be a non-empty list of {from, value}"),
    "train not a boolean": (
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo", "train": "no"}]},
        "turn 2: 'train' must be true or false, not 'no'",
    ),
    "weight not 0 or 1": (
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo", "weight": 0.5}]},
        "turn 2: 'weight' must be 0 or 1, not 0.5",
    ),
    "nothing trained": (
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo", "weight": 0}]},
        "no turn is trained",
    ),
}

RECIPE = """
[run]
seed = 3
threads = 1

[[data.sources]]
type = "files"
path = "chats.jsonl"

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
template = "chatml"

[training]
learning_rate = 3e-3
batch_size = 16
epochs = 1
log_every = 5
best_metric = "perplexity"
"""


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_row_is_a_data_error_naming_the_file_and_line(tmp_path, case):
    bad, message = BAD[case]
    write_jsonl(tmp_path / "chats.jsonl", [GOOD] * 6 + [bad] + [GOOD] * 3)
    recipe = write(tmp_path / "r.toml", RECIPE.format(format="sharegpt"))
    with pytest.raises(DataError) as error:
        run_recipe(recipe, tmp_path / "run")
    assert str(error.value).startswith(f"{tmp_path / 'chats.jsonl'}, line 7: ")
    assert message in str(error.value)


def test_openai_rows_are_checked_alike(tmp_path):
    tool = {"messages": [*TALK[:2], {"role": "tool", "content": "42"}]}
    write_jsonl(tmp_path / "chats.jsonl", [{"messages": TALK}] * 4 + [tool] + [{"messages": TALK}] * 5)
    recipe = write(tmp_path / "r.toml", RECIPE.format(format="openai"))
    with pytest.raises(DataError, match=r"chats.jsonl, line 5: turn 3: unknown role 'tool' \(known: system, user, "):
        run_recipe(recipe, tmp_path / "run")


# -- end to end -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sharegpt_run_trains_and_answers(tmp_path):
    rows = [as_chat(r, random.Random(2)) for r in generate(400, 2)]
    for row in rows[::2]:  # half the rows leave their second answer out of the loss
        row["messages"][3]["weight"] = 0
    write_jsonl(tmp_path / "chats.jsonl", [to_sharegpt(row) for row in rows])
    recipe = write(tmp_path / "r.toml", RECIPE.format(format="sharegpt"))
    result = run_recipe(recipe, tmp_path / "run", ["training.eval_on_start=true"])
    evals = [r for r in result.run_dir.read_metrics_log() if r["split"] == "validation"]
    assert evals[0]["step"] == 0 and evals[-1]["loss"] < evals[0]["loss"] - 1.0
