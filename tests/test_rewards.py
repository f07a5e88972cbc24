"""The built-in rewards (plugins/rewards/): each passes runner.testing's RewardContract, scores what it
says it scores, and a recipe that names one wrongly is a recipe error at its key.

The reward model is a one-layer GPT2ForSequenceClassification over a word-level tokenizer whose
weights are set by hand so that its score is about 1 when the text holds the word "zebra" and about
0 when not: which answers it prefers is known in advance."""

from __future__ import annotations

import math
import types

import pytest

from runner import AnswerExtractor, FinetuneError, Options, RecipeError, Reward, hookimpl, load_recipe
from runner.testing import RewardContract
from tests.conftest import tiny_recipe

WORDS = ["the", "answer", "is", "a", "zebra", "horse", "red", "blue", "it", "says", "so", "Q:", "what", "colour", "?"]


def make_reward(name: str, **options):
    from runner.plugins.manager import get_plugins

    cls = get_plugins().registry.get("reward", name)
    return cls(cls.Options.model_validate(options))


def score(reward, completions, rows=None, prompts=None):
    rows = rows or [{} for _ in completions]
    return reward.checked_scores(prompts or ["Q: what ?"] * len(completions), completions, rows)


# -- a tiny reward model that likes zebras ---------------------------------------------------------
def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def gpt2_config(tokenizer, **extra):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_head=1, n_embd=32, n_positions=24, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra)  # fmt: skip


def zebra_judge(directory):
    """The only non-zero embedding is zebra's; attention passes the values through uniformly, so the
    last position holds (zebras / tokens) times zebra's direction, which the final layer norm scales
    back to that direction and the score head reads as 1 (tests/test_preference_audits.py's judge)."""
    import torch
    from transformers import GPT2ForSequenceClassification

    tokenizer = word_tokenizer()
    model = GPT2ForSequenceClassification(gpt2_config(tokenizer, num_labels=1))
    d = model.config.n_embd
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        block = model.transformer.h[0]
        for ln in (block.ln_1, block.ln_2, model.transformer.ln_f):
            ln.weight.fill_(1.0)
        u = torch.zeros(d)
        u[0], u[1] = 3.0, -3.0
        model.transformer.wte.weight[tokenizer.convert_tokens_to_ids("zebra")] = u
        block.attn.c_attn.weight[:, 2 * d :] = torch.eye(d)
        block.attn.c_proj.weight.copy_(torch.eye(d))
        direction = torch.nn.functional.layer_norm(u, (d,))
        model.score.weight[0] = direction / direction.dot(direction)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    pytest.importorskip("torch")
    return zebra_judge(tmp_path_factory.mktemp("judge"))


# -- the contract, for each built-in ---------------------------------------------------------------
ROWS = [{"answer": "1000"}, {"answer": 7}, {"answer": None}, {"answer": ["12", "twelve"]}]


class TestAnswerMatchContract(RewardContract):
    reward = "answer_match"
    examples = [
        ("Q: 10 x 100?", "It is 1,000.", ROWS[0]),
        ("Q: 3 + 4?", "I think 8", ROWS[1]),
        ("Q: ?", "no idea", ROWS[2]),
        ("Q: 6 + 6?", "twelve, so 12", ROWS[3]),
    ]


class TestFormatContract(RewardContract):
    reward = "format"
    options = {"pattern": r"<answer>\d+</answer>"}
    examples = [("Q", "<answer>12</answer>\n", {}), ("Q", "12", {}), ("Q", "", {})]


class TestLengthPenaltyContract(RewardContract):
    reward = "length_penalty"
    options = {"limit": 3, "penalty": 2.0}
    examples = [("Q", "one two", {}), ("Q", "one two three four five", {}), ("Q", "a " * 20, {})]


class TestRewardModelContract(RewardContract):
    reward = "reward_model"
    examples = [
        ("Q: what colour ?", " it is red", {}),
        ("Q: what colour ?", " the zebra says blue", {}),
        ("Q: what colour ?", " zebra", {}),
        ("Q: what ?", " the answer is a horse so it is red blue red blue red blue", {}),  # cut to fit 24 positions
    ]

    @pytest.fixture(scope="class")
    @classmethod
    def reward_options(cls, judge_dir):
        return {"path": str(judge_dir)}


class BatchRelative(Reward):
    """Each answer's length against its batch's mean: a score that depends on the batch."""

    name = "batch_relative"

    def scores(self, prompts, completions, rows):
        mean = sum(map(len, completions)) / len(completions)
        return [len(c) - mean for c in completions]


def test_the_contract_fails_a_reward_whose_score_depends_on_its_batch():
    from runner.plugins.manager import Plugins, reset_plugins

    plugin = types.ModuleType("batch_relative_plugin")
    plugin.register_rewards = hookimpl(lambda register: register(BatchRelative))
    reset_plugins(Plugins(extra=[plugin]))

    class Contract(RewardContract):
        reward = "batch_relative"
        examples = [("Q", "a", {}), ("Q", "abc", {}), ("Q", "abcdef", {})]

    contract = Contract()
    reward = contract.registered()(BatchRelative.Options())
    contract.test_one_finite_score_or_none_per_completion(reward)
    contract.test_the_same_answers_score_the_same_twice(reward)
    with pytest.raises(AssertionError):
        contract.test_a_score_depends_neither_on_the_batch_nor_on_its_order(reward)


# -- answer_match ----------------------------------------------------------------------------------
def test_answer_match_compares_the_last_number_as_a_number():
    reward = make_reward("answer_match")
    completions = ["10 x 100 = 1000, so the answer is 1,000.", "so the answer is 999.", "I cannot say", "3.0"]
    rows = [{"answer": "1000"}, {"answer": "1000"}, {"answer": "1000"}, {"answer": "3"}]
    assert score(reward, completions, rows) == [1.0, 0.0, 0.0, 1.0]
    assert reward.extracted(completions) == ["1000", "999", None, "3.0"]
    custom = make_reward("answer_match", correct=2.0, wrong=-1.0)
    assert score(custom, completions, rows) == [2.0, -1.0, -1.0, 2.0]


def test_answer_match_takes_a_numeric_or_listed_reference_and_skips_a_missing_one():
    reward = make_reward("answer_match", column="gold")
    rows = [{"gold": 1000}, {"gold": ["7", "8"]}, {"gold": None}, {"gold": 2.5}]
    assert score(reward, ["1,000", "it is 8", "4", "2.50"], rows) == [1.0, 1.0, None, 1.0]


def test_answer_match_without_normalize_compares_text_as_it_is():
    completions = ["3.0", "Paris.", "  paris  "]
    rows = [{"answer": "3"}, {"answer": "paris"}, {"answer": "paris"}]
    assert score(make_reward("answer_match", extract="whole", normalize=False), completions, rows) == [0.0, 0.0, 1.0]
    assert score(make_reward("answer_match", extract="whole"), completions, rows) == [1.0, 1.0, 1.0]
    assert score(make_reward("answer_match", extract="whole"), ["3.5", "1,000", "3 apples"], rows) == [0.0, 0.0, 0.0]


def test_boxed_takes_the_last_box_with_its_nested_braces():
    reward = make_reward("answer_match", extract="boxed")
    completions = [r"first \boxed{1}, then \boxed{\frac{1}{2}}.", r"\boxed{x^{2}} and \boxed{broken", "no box"]
    assert reward.extracted(completions) == [r"\frac{1}{2}", "x^{2}", None]
    assert score(reward, completions, [{"answer": r"\frac{1}{2}"}] * 3) == [1.0, 0.0, 0.0]


def test_json_field_reads_the_last_top_level_object():
    reward = make_reward("answer_match", extract={"type": "json_field", "field": "answer"})
    completions = [
        'draft {"answer": 1} final {"answer": 42, "why": {"answer": 0}}',
        '{"answer": "Paris"} and then {not json',
        '{"other": 1}',
        "no json",
    ]
    assert reward.extracted(completions) == ["42", "Paris", None, None]
    assert score(reward, completions, [{"answer": "42"}, {"answer": "paris"}, {"answer": "1"}, {"answer": "1"}]) == [
        1.0,
        1.0,
        0.0,
        0.0,
    ]


def test_after_reads_the_rest_of_the_line_after_the_last_marker():
    reward = make_reward("answer_match", extract={"type": "after", "marker": "Answer:"})
    completions = ["Answer: 3\nwait.\nAnswer:  Blue whale \nthanks", "Answer:\n5", "no marker"]
    assert reward.extracted(completions) == ["Blue whale", None, None]
    assert score(reward, completions, [{"answer": "blue whale."}] * 3) == [1.0, 0.0, 0.0]


class FencedCode(AnswerExtractor):
    """The last fenced code block of `language` (a third party's extractor, with an option of its own)."""

    name = "fenced_code"

    class Options(Options):
        language: str

    def extract(self, text):
        fence = "```" + self.options.language + "\n"
        at = text.rfind(fence)
        end = text.find("```", at + len(fence)) if at >= 0 else -1
        return text[at + len(fence) : end].strip() if end >= 0 else None


def test_a_plugin_s_extractor_is_named_in_a_recipe_like_a_built_in(tmp_path):
    from runner.plugins.manager import Plugins, reset_plugins

    plugin = types.ModuleType("fenced_code_plugin")
    plugin.register_extractors = hookimpl(lambda register: register(FencedCode))
    plugin.register_trainers = hookimpl(lambda register: register(fake_grpo_class()))
    plugins = Plugins(extra=[plugin])
    reset_plugins(plugins)  # the run builds nested components from the process's plugins
    table = (
        '\n[[rewards]]\ntype = "answer_match"\nnormalize = false\nextract = { type = "fenced_code", language = "%s" }\n'
    )
    assert "rewards[0].extract.language: required key is missing" in problems(
        tmp_path, table.replace(', language = "%s"', ""), plugins=plugins
    )
    path = tiny_recipe(tmp_path / "ok.toml", extra=table % "python")
    path.write_text(path.read_text().replace("[training]\n", '[training]\ntype = "fake_grpo"\n'))
    reward = load_recipe(path, plugins=plugins).rewards[0].create()
    completions = ["```python\nprint(1)\n```", "```js\nprint(1)\n```", "print(1)"]
    assert score(reward, completions, [{"answer": "print(1)"}] * 3) == [1.0, 0.0, 0.0]
    assert reward.extracted(completions) == ["print(1)", None, None]


def test_reference_extract_finds_the_reference_in_a_worked_solution():
    reward = make_reward("answer_match", reference_extract="last_number")
    rows = [{"answer": "48 / 2 = 24 clips.\n#### 1,072"}, {"answer": "no number here"}]
    assert score(reward, ["so 1072", "so 1072"], rows) == [1.0, None]


def test_a_row_without_the_column_is_an_error_naming_it_and_the_row_columns():
    reward = make_reward("answer_match", column="solution")
    with pytest.raises(FinetuneError, match="no column 'solution'") as caught:
        score(reward, ["12"], [{"prompt": "Q", "answer": "12"}])
    assert "prompt, answer" in caught.value.message and "answer_match" in caught.value.message


def test_answer_match_refuses_a_right_answer_scored_like_a_wrong_one():
    cls = make_reward("answer_match").__class__
    recipe = types.SimpleNamespace(training=types.SimpleNamespace(cls=FakeGRPO, name="fake_grpo"))
    found = list(cls.check(cls.Options.model_validate({"correct": 0.0}), recipe))
    assert [k for k, _ in found] == [("correct",)] and "alike" in found[0][1], found
    assert not list(cls.check(cls.Options.model_validate({}), recipe))


# -- format and length_penalty ---------------------------------------------------------------------
def test_format_full_needs_the_whole_completion_and_search_a_part():
    completions = ["<think>hm\nok</think><answer>4</answer>\n", "sure: <think>x</think><answer>4</answer>", "4"]
    pattern = r"<think>.*</think><answer>\d+</answer>"
    assert score(make_reward("format", pattern=pattern), completions) == [1.0, 0.0, 0.0]
    assert score(make_reward("format", pattern=pattern, mode="search"), completions) == [1.0, 1.0, 0.0]
    assert score(make_reward("format", pattern=pattern, matched=0.5, unmatched=-0.5), completions) == [0.5, -0.5, -0.5]


def test_a_pattern_that_does_not_compile_is_refused_at_its_key():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a regular expression") as caught:
        make_reward("format", pattern="<answer>(\\d+</answer>")
    assert caught.value.errors()[0]["loc"] == ("pattern",)


def test_length_penalty_is_zero_up_to_the_limit_then_grows_to_the_penalty():
    words = make_reward("length_penalty", limit=4, penalty=2.0)
    texts = ["one two", "a b c d", "a b c d e", "a b c d e f", " ".join("x" * 8), " ".join("x" * 30)]
    assert score(words, texts) == pytest.approx([0.0, 0.0, -0.5, -1.0, -2.0, -2.0])
    characters = make_reward("length_penalty", limit=10, unit="characters")
    assert score(characters, ["  abcdefghij\n", "abcdefghijklmno", "a" * 40]) == pytest.approx([0.0, -0.5, -1.0])


# -- reward_model ----------------------------------------------------------------------------------
def test_the_reward_model_scores_zebra_answers_near_1_and_others_near_0(judge_dir, tmp_path):
    from runner import RunContext

    reward = make_reward("reward_model", path=str(judge_dir))
    said = []
    reward.prepare(RunContext(seed=0, cache_dir=tmp_path, info=said.append, warn=said.append))
    try:
        found = score(reward, [" the zebra says red", " it is red", " a horse"], prompts=["Q: what colour ?"] * 3)
        assert found[0] == pytest.approx(1.0, abs=0.05)
        assert found[1] == pytest.approx(0.0, abs=0.05) and found[2] == pytest.approx(0.0, abs=0.05)
        long = " ".join(["red"] * 40)
        score(reward, [long], prompts=["Q: what colour ?"])
        assert any("longer than the reward model's 24 positions" in line for line in said), said
    finally:
        reward.close()
    assert reward.model is None


def test_scoring_before_the_reward_model_is_loaded_is_an_error(judge_dir):
    with pytest.raises(FinetuneError, match="before its reward model was loaded"):
        score(make_reward("reward_model", path=str(judge_dir)), ["zebra"])


# -- recipes ---------------------------------------------------------------------------------------
def fake_grpo_class():
    from plugins.trainers.hf import HF

    class Fake(HF):
        """A trainer that takes rewards (it never trains here: recipes are only validated)."""

        name = "fake_grpo"
        takes_rewards = True

    return Fake


FakeGRPO = types.SimpleNamespace(takes_rewards=True)  # what Reward.check reads of a trainer class


@pytest.fixture
def plugins():
    from runner.plugins.manager import Plugins

    plugin = types.ModuleType("fake_grpo_plugin")
    plugin.register_trainers = hookimpl(lambda register: register(fake_grpo_class()))
    return Plugins(extra=[plugin])


def problems(tmp_path, rewards: str, trainer: str | None = "fake_grpo", plugins=None) -> str:
    path = tiny_recipe(tmp_path / "r.toml", extra=rewards)
    if trainer:
        path.write_text(path.read_text().replace("[training]\n", f'[training]\ntype = "{trainer}"\n'))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, plugins=plugins)
    assert "Traceback" not in caught.value.render()
    return caught.value.render()


def test_rewards_with_a_trainer_that_does_not_take_them_are_a_recipe_error(tmp_path):
    found = problems(tmp_path, '\n[[rewards]]\ntype = "answer_match"\n', trainer=None)
    assert "rewards[0].type" in found and "'grpo'" in found, found


def test_an_unknown_reward_gets_a_did_you_mean(tmp_path, plugins):
    found = problems(tmp_path, '\n[[rewards]]\ntype = "answer_mach"\n', plugins=plugins)
    assert "rewards[0].type" in found and "did you mean 'answer_match'?" in found, found


def test_two_rewards_of_one_type_need_distinct_names(tmp_path, plugins):
    two = '\n[[rewards]]\ntype = "format"\npattern = "a"\n\n[[rewards]]\ntype = "format"\npattern = "b"\n'
    found = problems(tmp_path, two, plugins=plugins)
    assert "format" in found and "distinct `name`" in found, found
    named = two.replace('pattern = "b"', 'pattern = "b"\nname = "format_b"')
    path = tiny_recipe(tmp_path / "ok.toml", extra=named)
    path.write_text(path.read_text().replace("[training]\n", '[training]\ntype = "fake_grpo"\n'))
    recipe = load_recipe(path, plugins=plugins)
    assert [r.create().key() for r in recipe.rewards] == ["format", "format_b"]


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ('type = "answer_match"\nmarker = "A:"', "rewards[0].marker", "unknown key"),
        ('type = "answer_match"\nextract = "last_word"', "rewards[0].extract:", "did you mean 'last_number'"),
        ('type = "answer_match"\nextract = "my.module.extract"', "rewards[0].extract:", "never import paths"),
        ('type = "answer_match"\nextract = "json_field"', "rewards[0].extract.field", "required key is missing"),
        ('type = "answer_match"\nextract = {{ type = "after", mark = "A:" }}', "rewards[0].extract.mark", "'marker'"),
        (
            'type = "answer_match"\nreference_extract = {{ type = "boxd" }}',
            "rewards[0].reference_extract.type",
            "boxed",
        ),
        ('type = "answer_match"\ncolum = "x"', "rewards[0].colum", "column"),
        ('type = "format"\npattern = "(unclosed"', "rewards[0].pattern", "not a regular expression"),
        ('type = "length_penalty"\nlimit = 0', "rewards[0].limit", "greater than or equal to 1"),
        ('type = "reward_model"\npath = "./no/such/model"', "rewards[0].path", "no such reward model"),
        ('type = "reward_model"\npath = "{lm}"', "rewards[0].path", "not a sequence classifier"),
    ],
)
def test_bad_reward_options_are_recipe_errors_at_their_key(table, key, message, tmp_path, plugins):
    from transformers import GPT2LMHeadModel

    lm = tmp_path / "lm"
    if "{lm}" in table:
        GPT2LMHeadModel(gpt2_config(word_tokenizer())).save_pretrained(lm)
    found = problems(tmp_path, "\n[[rewards]]\n" + table.format(lm=lm) + "\n", plugins=plugins)
    assert key in found and message in found, found


def test_a_reward_model_folder_validates(judge_dir, tmp_path, plugins):
    path = tiny_recipe(tmp_path / "r.toml", extra=f'\n[[rewards]]\ntype = "reward_model"\npath = "{judge_dir}"\n')
    path.write_text(path.read_text().replace("[training]\n", '[training]\ntype = "fake_grpo"\n'))
    recipe = load_recipe(path, plugins=plugins)
    assert recipe.rewards[0].name == "reward_model" and math.isclose(recipe.rewards[0].options.weight, 1.0)
