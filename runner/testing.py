"""The plugin author's kit: pytest fixtures and contract tests a component passes by subclassing.

Installed with finetune-runner as a pytest plugin (entry point `pytest11`), so in any test suite:

Fixtures
- `finetune_plugins`: a fresh plugin manager (built-ins and installed plugins) for this test only.
- `write_recipe`: `write_recipe(text, name="recipe.toml")` writes a recipe into the test's tmp_path.
- `run_recipe`: `run_recipe(path, overrides=[...])` runs it in this process through the front door
  (`runner.run`) and returns its `RunOutcome` (status, metrics, run directory, trained model and
  tokenizer).

Helpers
- `load_run(path)`: a finished run directory's recipe, task, tokenizer and model, loaded the way
  `finetune predict` loads them (to check that what a run saved reloads to the same outputs).

Contract tests: subclass `StrategyContract` in a test module and set `strategy` to the recipe
table; pytest collects four tests per architecture, all on tiny random models (no download):

    from runner.testing import StrategyContract

    class TestBitFit(StrategyContract):
        strategy = {"type": "bitfit"}

        def trains(self, name):
            return name.endswith(".bias") or name.startswith("score.")

Nothing here imports torch until a test runs.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest

ARCHITECTURES = ("gpt2", "bert", "llama")
VOCAB = 64

# Tiny configs without dropout, so that losses compare exactly between two forward passes.
_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "bert": dict(
        num_hidden_layers=2,
        num_attention_heads=2,
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ),
    "llama": dict(
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=64,
    ),
}


def load_run(path: Path | str):
    """The recipe, task, tokenizer and model of the finished run in `path` (`.model`, `.tokenizer`, ...)."""
    from runner.running.finished import open_run

    return open_run(path).load()


def tiny_spec(head: str = "sequence_classification"):
    from runner.components import ModelSpec

    if head == "sequence_classification":
        labels = ["a", "b", "c"]
        return ModelSpec(
            head=head,
            vocab_size=VOCAB,
            max_length=32,
            pad_token_id=0,
            num_labels=3,
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            problem_type="single_label_classification",
        )
    return ModelSpec(head=head, vocab_size=VOCAB, max_length=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_model(architecture: str = "gpt2", head: str = "sequence_classification", seed: int = 0):
    """A small randomly initialised model of a real architecture; the same seed gives the same weights."""
    import torch
    from transformers import AutoConfig

    from runner.toolkit.modeling import auto_class

    spec = tiny_spec(head)
    values = {**_CONFIGS[architecture], "vocab_size": VOCAB, **spec.config_overrides()}
    values.update(bos_token_id=1, eos_token_id=2)  # inside the tiny vocabulary
    config = AutoConfig.for_model(architecture, **values)
    torch.manual_seed(seed)
    return auto_class(head).from_config(config)


def tiny_batch(head: str = "sequence_classification", rows: int = 4, length: int = 12, seed: int = 1):
    """A fixed batch without padding: input ids, attention mask and labels."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=generator)
    labels = torch.randint(0, 3, (rows,), generator=generator) if head == "sequence_classification" else ids.clone()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def read_last_real_token(model):
    from runner.toolkit.modeling import read_last_real_token

    return read_last_real_token(model)


def _logits(model, batch):
    import torch

    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()


def _loss(model, batch) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


class StrategyContract:
    """Contract tests for a strategy. Subclass it in a module named test_*.py; set `strategy`."""

    strategy: ClassVar[dict[str, Any]] = {}  # the recipe's [strategy] table, with its type
    architectures: ClassVar[tuple[str, ...]] = ARCHITECTURES
    heads: ClassVar[tuple[str, ...]] = ("sequence_classification", "causal_lm")
    learning_rate: ClassVar[float] = 1e-2
    freezes_base: ClassVar[bool] = True  # some parameters must stay frozen

    def trains(self, name: str) -> bool:
        """Whether the parameter called `name` may train. Override it; the default allows all."""
        return True

    # -- helpers --------------------------------------------------------------------------------
    def make(self):
        """The strategy component, built from `strategy` through the registered plugins."""
        from runner.plugins.manager import get_plugins

        options = {k: v for k, v in self.strategy.items() if k != "type"}
        cls = get_plugins().registry.get("strategy", self.strategy["type"])
        assert cls is not None, f"no strategy '{self.strategy['type']}' is registered"
        return cls(cls.Options.model_validate(options))

    def adapted(self, architecture: str, head: str, tmp_path: Path):
        from runner.components import RunContext

        strategy = self.make()
        ctx = RunContext(seed=0, cache_dir=tmp_path / "cache", run_dir=tmp_path)
        model = strategy.apply(tiny_model(architecture, head), ctx, tiny_spec(head))
        return strategy, read_last_real_token(model)  # as the runner does after apply and load

    def step(self, model, batch) -> None:
        import torch

        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.learning_rate)
        model.eval()  # no dropout: the loss before and after compare exactly
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    # -- the contract ---------------------------------------------------------------------------
    def test_only_the_intended_parameters_train(self, architecture, head, tmp_path):
        _, model = self.adapted(architecture, head, tmp_path)
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        assert trainable, "nothing would train"
        unexpected = [name for name in trainable if not self.trains(name)]
        assert not unexpected, f"these should stay frozen: {unexpected[:5]}"
        if self.freezes_base:
            assert any(not p.requires_grad for p in model.parameters()), "every parameter trains"

    def test_one_optimisation_step_lowers_the_loss(self, architecture, head, tmp_path):
        _, model = self.adapted(architecture, head, tmp_path)
        batch = tiny_batch(head)
        before = _loss(model, batch)
        self.step(model, batch)
        assert _loss(model, batch) < before

    def test_save_then_load_reproduces_the_logits(self, architecture, head, tmp_path):
        import torch

        strategy, model = self.adapted(architecture, head, tmp_path)
        batch = tiny_batch(head)
        untrained = _logits(model, batch)
        self.step(model, batch)
        trained = _logits(model, batch)
        assert not torch.equal(trained, untrained), "the step changed nothing the model computes"
        (tmp_path / "saved").mkdir()  # as the runner does: the directory exists, empty
        strategy.save(model, tmp_path / "saved")
        loaded = strategy.load(tmp_path / "saved", tiny_spec(head), lambda: tiny_model(architecture, head))
        assert torch.allclose(_logits(loaded, batch), trained, atol=1e-5)

    def test_padding_does_not_change_what_a_row_predicts(self, architecture, head, tmp_path):
        """A row's prediction is the same alone and in a padded batch (the runner pads on the right)."""
        import torch

        from runner.toolkit.collate import PadCollator

        if head != "sequence_classification":
            pytest.skip("about classifiers: which position a sequence classifier reads")
        strategy, model = self.adapted(architecture, head, tmp_path)
        self.step(model, tiny_batch(head))
        (tmp_path / "saved").mkdir()
        strategy.save(model, tmp_path / "saved")
        loaded = read_last_real_token(
            strategy.load(tmp_path / "saved", tiny_spec(head), lambda: tiny_model(architecture, head))
        )
        ids = tiny_batch(head, rows=4, length=12)["input_ids"].tolist()
        rows = [{"input_ids": row[:n]} for row, n in zip(ids, (12, 7, 3, 9), strict=True)]
        batched = _logits(loaded, PadCollator(0, side="right")(rows))
        alone = torch.cat([_logits(loaded, PadCollator(0)([row])) for row in rows])
        assert torch.allclose(batched, alone, atol=1e-5), "padding changed the logits of a row"

    def test_merge_keeps_the_logits_or_says_it_cannot(self, architecture, head, tmp_path):
        import torch

        from runner.errors import FinetuneError

        strategy, model = self.adapted(architecture, head, tmp_path)
        batch = tiny_batch(head)
        self.step(model, batch)
        trained = _logits(model, batch)
        if not strategy.can_merge and strategy.saves_adapter():
            with pytest.raises(FinetuneError, match="cannot"):
                strategy.merge(model)
            return
        merged = strategy.merge(model)
        assert type(merged).__module__.startswith("transformers."), "a merged model is a plain transformers model"
        assert torch.allclose(_logits(merged, batch), trained, atol=1e-4)


def pytest_generate_tests(metafunc) -> None:
    """Run each contract test once per architecture and head the contract names."""
    cls = metafunc.cls
    if cls is None or not issubclass(cls, StrategyContract):
        return
    if "architecture" in metafunc.fixturenames and "head" in metafunc.fixturenames:
        cases = [(a, h) for a in cls.architectures for h in cls.heads]
        metafunc.parametrize(("architecture", "head"), cases, ids=[f"{a}-{h}" for a, h in cases])


@pytest.fixture
def finetune_plugins():
    """A fresh plugin manager for this test; the previous one is restored afterwards."""
    from runner.plugins import manager as plugin_manager

    previous = plugin_manager._DEFAULT
    plugins = plugin_manager.Plugins()
    plugin_manager.reset_plugins(plugins)
    yield plugins
    plugin_manager.reset_plugins(previous)


@pytest.fixture
def write_recipe(tmp_path):
    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_recipe(tmp_path):
    def run(path: Path, overrides: list[str] | None = None):
        from runner.running.starting import run as run_recipe

        return run_recipe(path, overrides=overrides, output=tmp_path / "run")

    return run


class RewardContract:
    """Contract tests for a reward. Subclass it in a module named test_*.py; set `reward` (its
    registered name), `options` (its recipe table, without `type`) and `examples`: (prompt,
    completion, row) triples it scores, at least one of them with a number (not None).

    Options known only when the test runs (a model folder a fixture builds) come from the class
    fixture `reward_options`: override it in the subclass (`@pytest.fixture(scope="class")` over a
    `@classmethod`, as pytest wants class-scoped fixtures).

        from runner.testing import RewardContract

        class TestEndsPolitely(RewardContract):
            reward = "ends_politely"
            examples = [("Ask me.", "Tell me, please.", {}), ("Ask me.", "Tell me.", {})]
    """

    reward: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    examples: ClassVar[list[tuple[str, str, dict[str, Any]]]] = []

    @pytest.fixture(scope="class")
    @classmethod
    def reward_options(cls) -> dict[str, Any]:
        return dict(cls.options)

    @pytest.fixture(scope="class")
    @classmethod
    def prepared(cls, reward_options, tmp_path_factory):
        """The reward built from its options through the registered plugins, prepared as a run
        prepares it (a reward model loaded), and closed after the class's tests."""
        from runner.components import RunContext

        registered = cls.registered()
        instance = registered(registered.Options.model_validate(reward_options))
        tmp = tmp_path_factory.mktemp("reward")
        instance.prepare(RunContext(seed=0, cache_dir=tmp / "cache", run_dir=tmp, info=lambda _: None))
        yield instance
        instance.close()

    @classmethod
    def registered(cls):
        from runner.components import Reward
        from runner.plugins.manager import get_plugins

        found = get_plugins().registry.get("reward", cls.reward)
        assert found is not None, f"no reward '{cls.reward}' is registered"
        assert issubclass(found, Reward), f"'{cls.reward}' is a {found.__name__}, not a runner.Reward"
        return found

    def scored(self, reward, examples) -> list[float | None]:
        prompts, completions, rows = (list(column) for column in zip(*examples, strict=True))
        return reward.checked_scores(prompts, completions, rows)

    # -- the contract ---------------------------------------------------------------------------
    def test_it_is_registered_and_its_options_validate(self, reward_options):
        assert self.examples, "set `examples`: (prompt, completion, row) triples"
        cls = self.registered()
        assert cls.name == self.reward and cls.kind == "reward"
        cls.Options.model_validate(reward_options)

    def test_one_finite_score_or_none_per_completion(self, prepared):
        import math

        scores = self.scored(prepared, self.examples)
        assert len(scores) == len(self.examples)
        assert all(s is None or (isinstance(s, float) and math.isfinite(s)) for s in scores), scores
        assert any(s is not None for s in scores), "every example was skipped (None): nothing was scored"

    def test_the_same_answers_score_the_same_twice(self, prepared):
        assert self.scored(prepared, self.examples) == self.scored(prepared, self.examples)

    def test_a_score_depends_neither_on_the_batch_nor_on_its_order(self, prepared):
        together = self.scored(prepared, self.examples)
        alone = [self.scored(prepared, [example])[0] for example in self.examples]
        reversed_ = self.scored(prepared, self.examples[::-1])[::-1]
        for found in (alone, reversed_):
            assert [s is None for s in found] == [s is None for s in together]
            assert [s for s in found if s is not None] == pytest.approx(
                [s for s in together if s is not None], rel=1e-5, abs=1e-5
            )

    def test_an_unknown_option_is_refused(self, reward_options):
        from pydantic import ValidationError

        with pytest.raises(ValidationError, match="no_such_option"):
            self.registered().Options.model_validate({**reward_options, "no_such_option": 1})
