"""Trainer `grpo`: TRL's GRPOTrainer behind the hf trainer's machinery, fed the task's rendered prompts and
scored by `runner.Reward` components, on a tiny random GPT-2 whose answers a rule rewards (the share of
answer tokens among w3-w29)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from runner import FinetuneError, Reward
from tests.test_dpo import EOS, causal_model, word_tokenizer
from tests.test_dpo import Events as Logs

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

MAX_NEW = 6


class Events(Logs):
    def __init__(self):
        super().__init__()
        self.warnings = []

    def warn(self, message):
        self.warnings.append(message)


class LowTokens(Reward):
    """The share of an answer's words among w3-w29 (the rule the policy should learn)."""

    name = "low_tokens"

    def scores(self, prompts, completions, rows):
        out = []
        for text in completions:
            words = [w for w in text.split() if w.startswith("w")]
            out.append(sum(int(w[1:]) < 30 for w in words) / len(words) if words else 0.0)
        return out


class Broken(Reward):
    """Answers a string: a bug the trainer must name, never read as a zero."""

    name = "broken"

    def scores(self, prompts, completions, rows):
        return ["high"] * len(completions)


class Prompts:
    """The part of a generating task grpo uses: rendered prompts with references, and stop tokens."""

    options = SimpleNamespace(max_new_tokens=MAX_NEW)

    def prompts(self, dataset, shots=None, tokenizer=None):
        return [(row["prompt"], row["answer"]) for row in dataset]

    def stop_tokens(self, tokenizer):
        return [EOS]


def rows(n: int, seed: int):
    from datasets import Dataset

    rng = random.Random(seed)
    prompts = [" ".join(f"w{rng.randrange(3, 60)}" for _ in range(4)) for _ in range(n)]
    return Dataset.from_dict({"prompt": prompts, "answer": ["w3"] * n})


def grpo(**options):
    from plugins.trainers.grpo import GRPO

    settings = dict(learning_rate=5e-3, batch_size=8, generations=4, epochs=1, log_every=1, temperature=1.0)
    return GRPO(GRPO.Options(**{**settings, **options}))


def rloo(**options):
    from plugins.trainers.grpo import RLOO

    settings = dict(learning_rate=1e-2, batch_size=8, generations=4, max_steps=3, log_every=1)
    return RLOO(RLOO.Options(**{**settings, **options}))


def job(model, tokenizer, train, tmp_path, rewards, seed=7):
    from runner import TrainJob

    return TrainJob(
        model=model,
        tokenizer=tokenizer,
        task=Prompts(),
        train=None,
        evaluation=None,
        collator=None,
        compute_metrics=None,
        checkpoint_dir=tmp_path / "checkpoints",
        seed=seed,
        events=Events(),
        rewards=rewards,
        rows=[(Prompts(), train)],
    )


def reward(cls, **options):
    return cls(cls.Options(**options))


def test_grpo_raises_the_reward_of_the_sampled_answers(tmp_path):
    model = causal_model()
    work = job(model, word_tokenizer(), rows(32, seed=1), tmp_path, [reward(LowTokens)])
    trainer = grpo(epochs=1.5)
    outcome = trainer.fit(work)
    assert outcome.global_step == trainer.planned_steps(32) == 24  # 2 prompts (8 answers) a step
    logs = [values for _, values in work.events.logs]
    means = [values["rewards/low_tokens/mean"] for values in logs]
    assert len(means) == 24 and all("frac_reward_zero_std" in v and "reward_std" in v for v in logs)
    first, last = sum(means[:6]) / 6, sum(means[-6:]) / 6
    assert last > first + 0.2, means
    assert logs[0]["completions/mean_length"] > 0
    assert not work.events.warnings  # the reward pays for the tokens, not for running to the cap


@pytest.mark.parametrize(("kind", "beta"), [("grpo", 0.0), ("grpo", 0.04), ("rloo", 0.05)])
def test_the_loss_and_rewards_equal_a_hand_written_trl_script(kind, beta, tmp_path):
    """The same tiny model (saved, so that TRL can build its reference from the path), prompts, reward and
    seed: with beta > 0 the runner's frozen copy is the reference TRL loads again from the path."""
    import trl

    saved = tmp_path / "model"
    causal_model(seed=1).save_pretrained(saved)
    tokenizer, train = word_tokenizer(), rows(16, seed=3)
    load = __import__("transformers").AutoModelForCausalLM.from_pretrained
    work = job(load(saved), tokenizer, train, tmp_path / "runner", [reward(LowTokens)])
    trainer = grpo(max_steps=3, learning_rate=1e-2, beta=beta) if kind == "grpo" else rloo(beta=beta)
    trainer.fit(work)
    # GRPO's loss is ~0 at every step (each group's advantages sum to zero, the ratio is 1 on-policy):
    # the gradient's norm, the sampled answers' rewards and their spread are what tell two runs apart
    keys = ("loss", "grad_norm", "reward", "reward_std", "rewards/low_tokens/mean", "completions/mean_length")
    keys += ("kl",) if beta else ()
    ours = [v[k] for _, v in work.events.logs for k in keys]

    model = load(saved)
    model.generation_config.eos_token_id = [EOS]
    scorer = reward(LowTokens)

    def low_tokens(prompts, completions, **_):
        return scorer.scores(prompts, completions, [])

    settings = dict(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, num_generations=4, max_steps=3,
        learning_rate=1e-2, lr_scheduler_type="linear", max_completion_length=MAX_NEW, logging_steps=1,
        report_to="none", use_cpu=True, seed=7, data_seed=7, save_strategy="no",
        disable_tqdm=True, bf16=False, beta=beta,  # TRL's default is bf16 even on a CPU; the runner's 'auto' is fp32
    )  # fmt: skip
    config, trainer_class = (trl.GRPOConfig, trl.GRPOTrainer) if kind == "grpo" else (trl.RLOOConfig, trl.RLOOTrainer)
    script = trainer_class(
        model=model, reward_funcs=[low_tokens], args=config(**settings), train_dataset=train.remove_columns("answer"),
        processing_class=tokenizer,
    )  # fmt: skip
    script.train()
    theirs = [h[k] for h in script.state.log_history if "loss" in h for k in keys]
    assert len(ours) == len(theirs) == 3 * len(keys)
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    if beta:
        assert any(v["kl"] > 0 for _, v in work.events.logs)  # the policy moved away from its reference


def test_a_reward_that_answers_garbage_stops_the_run_naming_it(tmp_path):
    work = job(causal_model(), word_tokenizer(), rows(8, seed=1), tmp_path, [reward(Broken)])
    with pytest.raises(FinetuneError, match=r"reward 'broken' scored answer 0 of its batch a str \('high'\)"):
        grpo(max_steps=1).fit(work)


def test_a_plan_counts_the_prompts_each_step_samples():
    trainer = grpo(batch_size=8, generations=4, gradient_accumulation_steps=2, epochs=2)
    assert trainer.planned_steps(40) == 2 * 10  # 4 prompts (16 answers) a step
    assert trainer.planned_steps(40, world_size=2) == 2 * 5


def test_suspects_counts_favoured_answers_without_an_answer_or_cut_at_the_cap():
    from plugins.trainers._grpo import CUT, NO_ANSWER, suspects

    class Extracts:
        def extracted(self, completions):
            return [None if "?" in c else c for c in completions]

    completions = ["12", "??", "?", "7"]  # one group of 4: totals 1, 3, 0, 2 -> favoured: the 2nd and 4th
    ids = [[5, EOS], [5] * MAX_NEW, [5, EOS], [5] * MAX_NEW]
    total = torch.tensor([9.0, 9.0, 1.0, 3.0, 0.0, 2.0])  # another process's group of 2 first (start 2)
    shares = suspects([Extracts()], completions, ids, [EOS], MAX_NEW, total, start=2, generations=2)
    # groups of 2 from the start of the batch: (9, 9), (1, 3), (0, 2): favoured are "??" and "7", both cut
    assert shares == {NO_ANSWER: 1 / 4, CUT: 1.0 - 0.0}
    assert NO_ANSWER not in suspects([], completions, ids, [EOS], MAX_NEW, total, start=2, generations=2)


def test_a_run_whose_reward_pays_for_cut_answers_is_warned(tmp_path):
    class Long(Reward):
        name = "long"

        def scores(self, prompts, completions, rows):
            return [float(len(c.split())) for c in completions]

    class StopsOften(Prompts):
        def stop_tokens(self, tokenizer):  # a third of the vocabulary ends an answer: lengths vary
            return [EOS, *range(3, 30)]

    work = job(causal_model(), word_tokenizer(), rows(16, seed=1), tmp_path, [reward(Long)])
    work.rows = [(StopsOften(), work.rows[0][1])]
    work.task = StopsOften()
    trainer = grpo(max_steps=4)
    trainer.fit(work)
    logs = [values for _, values in work.events.logs]
    assert all("suspect/favoured_when_cut" in v for v in logs) and "suspect/favoured_without_answer" not in logs[0]
    warnings = work.events.warnings
    assert len(warnings) == 1 and f"were cut at {MAX_NEW} tokens" in warnings[0], warnings
    assert min(v["completions/clipped_ratio"] for v in logs) < 1  # some answers end early


def test_prompt_lengths_refuse_a_prompt_with_no_room_to_answer_and_warn_of_cut_ones():
    from plugins.trainers._grpo import prompt_lengths

    model, tokenizer = causal_model(), word_tokenizer()
    tokenizer.model_max_length = 5
    short, long = "w3 w4", " ".join(["w5"] * 8)
    assert prompt_lengths([short], tokenizer, model, MAX_NEW) == []
    (warning,) = prompt_lengths([short, long, short], tokenizer, model, MAX_NEW)
    assert "1 of 3 training prompts are longer than tokenizer.max_length (5 tokens; the longest has 8)" in warning
    limit = model.config.n_positions
    assert prompt_lengths([" ".join(["w5"] * (limit - MAX_NEW))], tokenizer, model, MAX_NEW)  # fits: a warning
    with pytest.raises(FinetuneError, match=f"needs {limit + 1} positions, and the model has {limit}"):
        prompt_lengths([" ".join(["w5"] * (limit - MAX_NEW + 1))], tokenizer, model, MAX_NEW)


def recipe_problems(change, tmp_path) -> str:
    """The recipe errors of tests/test_grpo_runs.py's recipe as `change` rewrites it (one must be found)."""
    from runner import RecipeError, load_recipe
    from tests.test_grpo_runs import RECIPE

    path = tmp_path / "r.toml"
    path.write_text(change(RECIPE), encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    return caught.value.render()


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (lambda r: r[: r.index("[[rewards]]")] + r[r.index("[evaluation]") :], "training.type", "names none"),
        (lambda r: r.replace("batch_size = 8", "batch_size = 6"), "training.generations", "not a multiple"),
        (lambda r: r.replace('type = "instruction"', 'type = "causal_lm"').replace('format = "alpaca"\n', "")
         .replace('template = "chatml"\n', "").replace("max_new_tokens = 8\n", ""), "training.type", "samples answers"),
        (lambda r: r.replace('type = "grpo"', 'type = "grpo"\nbeta = 0.1') + ZERO3, "training.beta", "ZeRO-3"),
        (lambda r: r.replace('type = "grpo"', 'type = "grpo"\ngeneration = "vllm"'), "training.generation",
         "pip install vllm"),
    ],
    ids=["no rewards", "split groups", "no prompts", "a copy under ZeRO-3", "vllm missing"],
)  # fmt: skip
def test_grpo_recipe_mistakes_name_their_key(change, key, message, tmp_path):
    found = recipe_problems(change, tmp_path)
    assert key in found and message in found, found


ZERO3 = '\n[distributed]\nengine = "deepspeed"\nzero_stage = 3\n'


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (lambda r: r.replace('type = "answer_match"', 'type = "my_rewards.math.exact_answer"'), "rewards[0].type",
         "never import paths"),
        (lambda r: r.replace('type = "answer_match"', 'type = "answer_match"\nfunction = "lambda c: 1.0"'),
         "rewards[0].function", "unknown key"),
        (lambda r: r.replace('type = "grpo"', 'type = "grpo"\nreward_funcs = ["my_rewards.exact_answer"]'),
         "training.reward_funcs", "rewards"),
    ],
    ids=["a dotted path as the type", "code as an option", "TRL's reward_funcs"],
)  # fmt: skip
def test_a_reward_named_by_a_dotted_path_or_given_code_is_refused(change, key, message, tmp_path):
    found = recipe_problems(change, tmp_path)
    assert key in found and message in found, found


def test_a_reward_that_raises_stops_the_run_naming_it(tmp_path):
    class Raises(Reward):
        name = "raises"

        def scores(self, prompts, completions, rows):
            raise KeyError("score")

    work = job(causal_model(), word_tokenizer(), rows(8, seed=1), tmp_path, [reward(Raises)])
    with pytest.raises(FinetuneError, match=r"reward 'raises' failed on a batch of 8 answers .*KeyError: 'score'"):
        grpo(max_steps=1).fit(work)


def test_a_left_padded_row_is_scored_at_the_positions_it_has_alone():
    """TRL's loss pass gives the model no position ids; a GPT-2 then counts them from the padding, and a
    short prompt in a batch of longer ones is scored at other positions than it was sampled at."""
    from plugins.trainers._grpo import PositionsFromMask

    model = causal_model().eval()
    ids = torch.tensor([[0, 0, 5, 6, 7], [4, 8, 5, 6, 7]])  # the first row: 3 tokens after 2 pads
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = model(input_ids=ids[:1, 2:]).logits[0]
        plain = model(input_ids=ids, attention_mask=mask).logits[0, 2:]
        fixed = PositionsFromMask(model)(input_ids=ids, attention_mask=mask).logits[0, 2:]
    assert torch.allclose(fixed, alone, atol=1e-5)
    assert not torch.allclose(plain, alone, atol=1e-3)  # what TRL's pass computes on its own
