"""The component kinds a plugin can register, and what each must do.

A recipe names a component with `type = "<name>"` in the section of its kind. A component is a
class with a `name`, an `Options` model (see `runner.options`) and the methods of its kind below.
Plugins register classes through the hooks in `runner.hookspecs`; the core instantiates them with
their validated options and calls these methods. Nothing here imports torch: a plugin module must
keep heavy imports inside its methods, so that `finetune --help` and `finetune validate` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from runner.options import Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from runner.recipe.resolved import Recipe

SPLITS = ("train", "validation", "test")


@dataclass
class RunContext:
    """What a component may know about the run it is part of."""

    seed: int
    cache_dir: Path
    run_dir: Path | None = None  # None while planning
    trust_remote_code: bool = False
    tokenizer_dir: Path | None = None  # where the run's tokenizer is saved, once it is
    info: Callable[[str], None] = print
    warn: Callable[[str], None] = print


class Component:
    """Base of every component. Subclasses set `name` and, usually, `Options`.

    The first line of the class docstring is the one-line summary that `finetune plan` and the
    generated recipe reference show.
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options
    # Names other tools use for our options, e.g. {"num_train_epochs": "epochs"}: an unknown key
    # found here is answered with the name this component uses instead of a bare "unknown key".
    aliases: ClassVar[dict[str, str]] = {}

    def __init__(self, options: Options):
        self.options = options

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def check(cls, options: Options, recipe: Recipe) -> Iterable[tuple[tuple, str]]:
        """Checks that need the whole recipe. Yield (key path inside this section, message)."""
        return ()


# -- data ---------------------------------------------------------------------------------------


class DataSourceOptions(Options):
    """Options every data source has."""

    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map the task's column names to this source's, e.g. {text = 'tweet', label = 'sentiment'}.",
    )
    name: str | None = Field(default=None, description="Label of this source's own metrics (default: type + index).")
    weight: float | None = Field(
        default=None,
        gt=0,
        description="Share of the training mix, relative to the other sources' weights (default: its size).",
    )
    task: dict[str, Any] = Field(
        default_factory=dict,
        description="Task options for this source's rows only, e.g. { format = 'chat', template = 'chatml' }.",
    )


@dataclass
class RawSplit:
    """One split as a data source delivers it, before any processing."""

    dataset: Dataset
    origin: str  # a file path or a description such as "inline rows in recipe.toml"
    row_word: str = "row"  # how to name a row of this origin: "row", "line"
    first_row: int = 1  # the number the first row has in `origin` (a CSV header makes it 2)

    def where(self, index: int) -> str:
        """Name row `index` of `dataset` the way the user finds it in the origin."""
        row = self.dataset[index]["_row"] if "_row" in self.dataset.column_names else index
        return f"{self.origin}, {self.row_word} {row + self.first_row}"


class DataSource(Component):
    """Reads rows from somewhere. Options subclass `DataSourceOptions`."""

    kind = "data_source"
    Options = DataSourceOptions

    def load(self, ctx: RunContext) -> dict[str, RawSplit]:
        """Return the splits this source provides: keys among "train", "validation", "test", or
        the single key "all" for data that is not split yet (the core splits it)."""
        raise NotImplementedError

    def fingerprint(self, ctx: RunContext) -> dict[str, Any]:
        """Identify the data exactly (file hashes, a content hash); recorded in environment.json and
        compared on resume."""
        raise NotImplementedError


# -- tokenizers and models --------------------------------------------------------------------


class TokenizerOptions(Options):
    """Options every tokenizer has."""

    max_length: int | None = Field(
        default=None, gt=0, description="Truncate inputs to this many tokens (default: the model's limit)."
    )
    padding: Literal["dynamic", "max_length"] = Field(
        default="dynamic",
        description="'dynamic' pads each batch to its longest row; 'max_length' pads every row to max_length.",
    )


class Tokenizer(Component):
    """Provides a tokenizer. Options subclass `TokenizerOptions`."""

    kind = "tokenizer"
    Options = TokenizerOptions

    def build(self, ctx: RunContext, texts: Callable[[], Iterator[str]]) -> PreTrainedTokenizerBase:
        """Return a ready tokenizer. `texts()` iterates the training texts, for tokenizers that are
        trained on the data."""
        raise NotImplementedError

    def model_max_length(self) -> int | None:
        """The longest input the tokenizer knows of, if any (used when max_length is not set)."""
        return None


@dataclass
class ModelSpec:
    """What a task needs from a model: the head and the sizes that depend on data and tokenizer."""

    head: Literal["sequence_classification", "causal_lm", "token_classification", "seq2seq_lm"]
    vocab_size: int
    max_length: int
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    decoder_start_token_id: int | None = None  # encoder-decoder models start decoding with it

    def config_overrides(self) -> dict[str, Any]:
        """Values to set on the model config (what a pretrained config must be told)."""
        keys = ("pad_token_id", "num_labels", "id2label", "label2id", "problem_type", "decoder_start_token_id")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


class Model(Component):
    """Builds the model to fine-tune."""

    kind = "model"

    def build(self, ctx: RunContext, spec: ModelSpec) -> PreTrainedModel:
        """Return the model with the head `spec` asks for."""
        raise NotImplementedError

    def build_empty(self, ctx: RunContext, spec: ModelSpec) -> PreTrainedModel:
        """The model without weights (on PyTorch's meta device): for `finetune plan` to count
        parameters without allocating or downloading them."""
        import torch

        with torch.device("meta"):
            return self.build(ctx, spec)

    def base_reference(self) -> str | None:
        """A hub id or path that loads the untouched base model; None when it exists only in this run
        (random init), in which case the core saves it next to an adapter."""
        return None

    def max_positions(self) -> int | None:
        """The longest sequence the model accepts, if known without loading it."""
        return None


# -- tasks --------------------------------------------------------------------------------------


class Task(Component):
    """Turns rows into model inputs and model outputs into predictions and metric inputs."""

    kind = "task"
    # What predictions look like, which decides the metrics that fit: "classes", "scores" or "tokens".
    produces: ClassVar[str] = ""
    head: ClassVar[str] = ""  # the ModelSpec head it asks for, known before the model is built
    columns: ClassVar[tuple[str, ...]] = ("text",)  # columns every row must have
    optional_columns: ClassVar[tuple[str, ...]] = ()
    stratify_column: ClassVar[str | None] = None  # split fractions keep this column's proportions
    default_metrics: ClassVar[tuple[dict, ...]] = ()

    def __init__(self, options: Options):
        super().__init__(options)
        self.notes: list[str] = []  # what encoding did that the user should know (rows dropped)

    def fit(self, splits: dict[str, list[RawSplit]]) -> None:
        """Learn what the task needs from the data (the label set) and check every row, raising
        DataError naming the origin and row of the first bad ones."""

    def training_texts(self, dataset: Dataset) -> Iterator[str]:
        """The texts of the training rows, for tokenizers that are trained on the data."""
        for column in ("text", "text_pair"):
            if column in dataset.column_names:
                yield from dataset[column]

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> str | None:
        """Adapt the tokenizer before anything is encoded (a chat template, marker tokens); what is
        set here is saved with it. Return a note for the user, or None."""
        return None

    def model_spec(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> ModelSpec:
        raise NotImplementedError

    def encode(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
        """Tokenize: return a dataset of model inputs with `labels` and a `length` column."""
        raise NotImplementedError

    def collator(self, tokenizer: PreTrainedTokenizerBase, pad_to: int | None) -> Callable:
        """Batch encoded rows. pad_to None pads each batch to its longest row."""
        raise NotImplementedError

    def preprocess_logits(self, logits, labels):
        """Reduce logits during evaluation so that only what metrics need is kept in memory."""
        return logits

    def metric_inputs(self, predictions, label_ids) -> tuple[Any, Any]:
        """Turn gathered evaluation outputs into (predictions, references) for metrics."""
        raise NotImplementedError

    def predict(self, model: PreTrainedModel, tokenizer, texts: list[str], max_length: int) -> list[dict]:
        """Predictions for raw texts, for `finetune predict` (and `generate` for text tasks)."""
        raise NotImplementedError

    # Answers prompts, so that text metrics (`consumes = {"text"}`: exact match, BLEU, ROUGE) and a
    # few-shot baseline apply: the task implements `prompts` and `generate`.
    generates: ClassVar[bool] = False

    def row_text(self, row: dict) -> str:
        """A row as one text, for audits that compare rows (leakage) or rewrite them (bias)."""
        return "\n".join(row[c] for c in ("text", "text_pair") if isinstance(row.get(c), str))

    def prompts(self, dataset: Dataset, shots: list[dict] | None = None, tokenizer=None) -> list[tuple[str, str]]:
        """For a generating task: each row's (prompt as the model is given it, reference answer).
        `shots` are training rows shown, solved, before each prompt (few-shot prompting); the
        tokenizer renders chat templates."""
        raise NotImplementedError

    def generate(self, model: PreTrainedModel, tokenizer, prompts: list[str], max_length: int, **options) -> list[str]:
        """Greedy answers to prompts made by `prompts`, without the prompt. `options`: the task's
        generation settings, such as max_new_tokens."""
        raise NotImplementedError

    def samples(self, model: PreTrainedModel, tokenizer, max_length: int) -> list[dict]:
        """Outputs worth reading after training (generated answers to the recipe's prompts);
        written to samples.jsonl in the run directory."""
        return []

    def preview(self, rows: list[dict], tokenizer, max_length: int) -> list[list[tuple[str, bool]]] | None:
        """For `finetune plan`: each row as the text the model sees, in (text, trained) pieces."""
        return None

    def state(self) -> dict[str, Any]:
        """What must be saved with the model to restore this task (label names)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Restore from `state()` when loading a finished run."""


# -- strategies ---------------------------------------------------------------------------------


class Strategy(Component):
    """Decides which parameters train, and how the fine-tuned model is saved and loaded."""

    kind = "strategy"
    can_merge: ClassVar[bool] = False
    # The highest DeepSpeed ZeRO stage the method works under (3 partitions the weights themselves).
    max_zero_stage: ClassVar[int] = 3

    def apply(self, model: PreTrainedModel, ctx: RunContext, spec: ModelSpec) -> PreTrainedModel:
        """Prepare the model for training (freeze, wrap with adapters); return the model to train.
        `spec` says which head the model has."""
        return model

    def save(self, model: PreTrainedModel, directory: Path) -> None:
        """Write the trained model in safetensors into `directory` (it exists and is empty),
        loadable by plain transformers/peft where the method allows."""
        model.save_pretrained(directory)

    def load(self, directory: Path, spec: ModelSpec, base: Callable[[], PreTrainedModel]) -> PreTrainedModel:
        """Load what `save` wrote. `base()` builds the untouched base model when one is needed."""
        from runner.pipeline.modeling import auto_class

        return auto_class(spec.head).from_pretrained(directory)

    def saves_adapter(self) -> bool:
        """True when `save` writes only an adapter, so the base model must be findable."""
        return False

    def extra_positions(self) -> int:
        """Positions the strategy adds to every input (virtual tokens); they count against the
        model's maximum length."""
        return 0

    def merge(self, model: PreTrainedModel) -> PreTrainedModel:
        """A plain transformers model with what trained folded into its weights, for
        `finetune export --merge`. A full model is already that; a strategy that cannot merge
        raises FinetuneError saying why."""
        if not self.saves_adapter():
            return model
        from runner.errors import FinetuneError

        raise FinetuneError(f"strategy '{self.name}' cannot merge its adapter into the base model")


# -- training -----------------------------------------------------------------------------------


@dataclass
class TrainJob:
    """Everything a trainer needs; assembled by the core."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: Task
    train: Dataset | None
    evaluation: Dataset | None
    collator: Callable
    compute_metrics: Callable[[Any], dict[str, float]]
    checkpoint_dir: Path
    seed: int
    events: Any  # runner.pipeline.events.Events
    resume_from: Path | None = None
    deterministic: bool = False
    deepspeed: dict[str, Any] | None = None  # the engine's DeepSpeed config, if it uses DeepSpeed
    greater_is_better: dict[str, bool] = field(default_factory=dict)  # metric key -> direction
    stop_requested: Callable[[], bool] = lambda: False


@dataclass
class TrainOutcome:
    global_step: int
    train_loss: float | None
    interrupted: bool = False
    best_checkpoint: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Trainer(Component):
    """Runs the optimisation loop, evaluation and checkpoints."""

    kind = "trainer"
    # The `[distributed] engine` names this trainer can train under. Under any of them the trainer
    # is started once per process (torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK).
    engines: ClassVar[tuple[str, ...]] = ("ddp",)

    def fit(self, job: TrainJob) -> TrainOutcome:
        raise NotImplementedError

    def evaluate(self, job: TrainJob, dataset: Dataset) -> dict[str, float]:
        """Evaluate `job.model` on `dataset`: loss and metrics, keys without a prefix."""
        raise NotImplementedError

    def planned_steps(self, train_rows: int, world_size: int = 1) -> int | None:
        """Optimizer steps the run will take for this many training rows on `world_size`
        processes (for `finetune plan`)."""
        return None

    def whole_model(self, job: TrainJob) -> AbstractContextManager:
        """A context in which `job.model` holds all its weights on this process, for saving it
        after `fit`. Every rank enters it. An engine that shards the weights (ZeRO-3) gathers them."""
        return nullcontext()


# -- distributed engines -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sharding:
    """How an engine spreads the model states over processes: the ZeRO stage (0 replicates
    everything; 1 shards the optimizer states, 2 also the gradients, 3 also the weights) and
    where optimizer states and weights are offloaded ("none", "cpu" or "nvme")."""

    zero_stage: int = 0
    offload_optimizer: str = "none"
    offload_params: str = "none"


class Engine(Component):
    """How training spreads over processes and devices (`[distributed] engine = ...`).

    The core launches one process per device (`finetune run --nproc N`) with torchrun or
    DeepSpeed's launcher; the engine says what each process's trainer is told."""

    kind = "engine"

    def sharding(self) -> Sharding:
        """How model states are sharded, for memory estimates and checks."""
        return Sharding()

    def deepspeed_config(self) -> dict[str, Any] | None:
        """The DeepSpeed config for the trainer, or None when the engine does not use DeepSpeed.
        Values the trainer decides (batch sizes, clipping, precision) are "auto": it fills them in."""
        return None

    def check_launch(self, world_size: int) -> None:
        """Checks that need the launch (imports allowed): raise FinetuneError before any process
        starts. Called once, in the launching process."""


# -- metrics and reporters ----------------------------------------------------------------------


class Metric(Component):
    """Scores predictions against references."""

    kind = "metric"
    # Task `produces` values it understands; "text" scores generated answers of a task that
    # `generates` (computed after training, on the final evaluation only).
    consumes: ClassVar[frozenset[str]] = frozenset()
    greater_is_better: ClassVar[bool] = True

    def key(self) -> str:
        """The name its value has in results, unique within a recipe (e.g. "f1_macro")."""
        return self.name

    def prepare(self, ctx: RunContext) -> None:
        """Load what computing needs (an evaluate module) before training starts, so that a metric
        that cannot load fails the run early rather than at its first evaluation."""

    def compute(self, predictions, references) -> dict[str, float]:
        raise NotImplementedError

    def details(self, predictions, references, num_labels: int | None = None) -> dict[str, Any]:
        """Tables beside the numbers, for evaluation.json and the report, computed on the final
        evaluation only: e.g. {"confusion_matrix": {"matrix": [[...]]}} (rows true, columns predicted,
        in label-id order over `num_labels` classes; the core adds the label names)."""
        return {}

    def meaningless(self, references) -> str | None:
        """Why this metric says nothing about predictions against these references, or None.
        A metric that answers is left out of the results, and evaluation.json records why."""
        return None


class Reporter(Component):
    """Shows a run's progress. Every method has a do-nothing default; override what you show."""

    kind = "reporter"

    def start(self, run: dict[str, Any]) -> None:
        """The run begins: its name, directory and recipe summary."""

    def stage(self, text: str) -> None:
        """A preparation stage begins ("loading data", "tokenizing")."""

    def message(self, text: str, level: str = "info") -> None:
        """Something the user should read (level "info" or "warning")."""

    def train_begin(self, total_steps: int, start_step: int) -> None:
        """Training starts, or resumes at `start_step`."""

    def log(self, step: int, values: dict[str, float]) -> None:
        """Training figures at an optimizer step (loss, learning_rate, epoch)."""

    def evaluated(self, split: str, step: int | None, metrics: dict[str, float]) -> None:
        """An evaluation finished; step is None after training."""

    def train_end(self) -> None:
        """Training stopped (finished, interrupted or failed)."""

    def audited(self, name: str, passed: bool | None, summary: str) -> None:
        """An audit's verdict: passed True/False, or None when it only measured."""

    def finish(self, status: str, summary: dict[str, Any]) -> None:
        """The run is over: status "completed", "interrupted" or "failed", and its final metrics."""


# -- audits -------------------------------------------------------------------------------------

GROUP_COLUMN = "group"  # an optional column naming each row's subgroup (map yours with `columns`)


@dataclass
class AuditResult:
    """What an audit found: shown by the reporters, kept in audits.json, the report and the model card."""

    passed: bool | None  # None: measured, with no threshold to judge it by
    summary: str  # one sentence a reader understands without the figures
    figures: dict[str, Any] = field(default_factory=dict)  # model audits: {"base": {...}, "finetuned": {...}}
    thresholds: dict[str, float] = field(default_factory=dict)  # the limits it was judged by
    examples: list[dict[str, Any]] = field(default_factory=list)  # rows worth reading (duplicates, flips)
    # A data audit's remedy: validation/test rows to leave out, by split, as indices into AuditData's
    # rows of that split (leakage with `drop = true`).
    drop: dict[str, list[int]] = field(default_factory=dict)


class AuditData:
    """The run's rows as audits see them: every source's split together, in the task's columns
    (plus `group` where the data has one), before tokenization."""

    def __init__(self, task: Task, parts: dict[str, list[tuple[Task, Dataset]]], where: Callable[[str, int], str]):
        self.task = task
        self._parts = parts  # split -> [(the source's task, its rows)]
        self._where = where

    def size(self, split: str) -> int:
        return sum(len(rows) for _, rows in self._parts.get(split, []))

    def texts(self, split: str) -> list[str]:
        """Each row as one text (`Task.row_text` of its source's task)."""
        return [task.row_text(row) for task, rows in self._parts.get(split, []) for row in rows]

    def column(self, split: str, name: str) -> list[Any] | None:
        """A column's values in row order, or None when some source lacks it."""
        parts = self._parts.get(split, [])
        if not parts or any(name not in rows.column_names for _, rows in parts):
            return None
        return [value for _, rows in parts for value in rows[name]]

    def where(self, split: str, index: int) -> str:
        """Where row `index` of `split` comes from, as the user finds it: "data/train.csv, row 12"."""
        return self._where(split, index)


class AuditSubject:
    """A model an audit measures: the untouched base model before training (`label` "base"), or
    the fine-tuned one ("finetuned")."""

    def __init__(self, label: str, model: PreTrainedModel, tokenizer, task: Task, max_length: int):
        self.label, self.model, self.tokenizer, self.task, self.max_length = label, model, tokenizer, task, max_length

    def predict(self, texts: list[str]) -> list[dict]:
        """The task's predictions for raw texts (classification: {"label", "score", "scores"})."""
        return self.task.predict(self.model, self.tokenizer, texts, self.max_length)

    def log_likelihoods(self, texts: list[str]) -> list[tuple[float, int]]:
        """Per text: (summed log-probability of its tokens, number of tokens scored). Language-model
        heads only; raises FinetuneError for others."""
        from runner.evaluation.scoring import log_likelihoods

        return log_likelihoods(self.model, self.tokenizer, texts, self.max_length)


class AuditOptions(Options):
    """Options every audit has."""

    name: str | None = Field(
        default=None, description="Its name in results (default: its type); needed to run two of one type."
    )


class Audit(Component):
    """Checks data or models for a problem (`[[audits]] type = ...`): leakage, bias, forgetting.

    A data audit implements `check_data`, run before training; a result that did not pass stops the
    run. A model audit implements `measure`, called on the base model before training and on the
    fine-tuned model after it, and `judge`, which turns both measurements into a result. An audit may
    also mitigate what it measures, by weighting or adding training rows."""

    kind = "audit"

    def key(self) -> str:
        """Its name in results: the recipe's `name` option if it has one, else its type."""
        return getattr(self.options, "name", None) or self.name

    def check_data(self, data: AuditData, ctx: RunContext) -> AuditResult | None:
        """Audit the rows alone, before anything is tokenized or trained."""
        return None

    def measure(self, subject: AuditSubject, data: AuditData, ctx: RunContext) -> dict[str, Any] | None:
        """Measure one model; return JSON-able figures, or None for a data-only audit."""
        return None

    def judge(self, base: dict[str, Any] | None, finetuned: dict[str, Any]) -> AuditResult:
        """The verdict from `measure`'s figures for the base model (None when it was not measured)
        and the fine-tuned one."""
        raise NotImplementedError

    def reweight(self, train: Dataset, task: Task) -> list[float] | None:
        """Mitigation: a training weight per row of `train` (mean 1), or None."""
        return None

    def augment(self, train: Dataset, task: Task) -> Dataset | None:
        """Mitigation: extra training rows in `train`'s columns, or None."""
        return None


KINDS: dict[str, type[Component]] = {
    cls.kind: cls for cls in (DataSource, Tokenizer, Model, Task, Strategy, Trainer, Engine, Metric, Reporter, Audit)
}
