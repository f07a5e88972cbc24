"""Reporter `mlflow`: the run as an MLflow run, in a local database or on a team's server.

By default every run of an output folder goes to `sqlite:///<output_dir>/mlflow.db`, with artefacts
under `<output_dir>/mlartifacts/` (MLflow 3 no longer takes plain file stores, hence SQLite). Set
`tracking_uri` to reach a team's server ("http://mlflow.internal:5000") or database.

What it logs: the resolved recipe as params and as the artefact `recipe.toml` (a param's name is
the value's key path as `--set` takes it, `training.learning_rate`, with each character MLflow
refuses in a name replaced by "_": `data.sources[0].type` is `data.sources_0_.type`);
`train/<figure>` at each logged step and `<split>/<metric>` at each evaluation (after-training
ones at the last step); baselines (`baseline_<name>/<split>/<metric>`, step 0); audits as tags and
`audits/<name>` metrics; tags with the run directory, status and sweep trial; and, for a completed
run, the model folder and report.html as artefacts.

It talks to MLflow through an explicit `MlflowClient`, never the fluent `mlflow.start_run` API: no
global active run that another library (or a second reporter) could end or log into.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import Field

from plugins.reporters import _tracking as tracking
from runner import Options, Reporter, hookimpl, key_paths

# MLflow's limits (mlflow.utils.validation), kept here so that no private module is imported:
# the longest param key and value a store takes, and the most params or tags in one request.
MAX_KEY, MAX_PARAM_VALUE, MAX_TAG_VALUE, PARAMS_PER_BATCH = 250, 6000, 8000, 100
METRICS_PER_BATCH = 1000
STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "stopped": "KILLED"}  # anything else: FAILED
SERVERS = ("http://", "https://", "databricks")  # tracking URIs that are servers, not databases
QUIET = ("mlflow", "alembic", "sqlalchemy.engine")  # INFO chatter: migrations, "creating experiment"


class MLflowOptions(Options):
    tracking_uri: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Where runs are tracked: a server ('http://mlflow.internal:5000') or a database URI "
            "(default: sqlite:///<output_dir>/mlflow.db, shared by the runs of that folder)."
        ),
    )
    experiment: str | None = Field(
        default=None, min_length=1, description="MLflow experiment, created if missing (default: the run's name)."
    )
    run_name: str | None = Field(
        default=None, min_length=1, description="MLflow run name (default: the run directory's name)."
    )
    artifacts: bool = Field(
        default=True, description="Upload a completed run's model folder and report.html as artefacts."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Extra tags set on the MLflow run.")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_local(uri: str) -> bool:
    """A store on this machine: MLflow would put its artefacts in ./mlruns of the working directory."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


class MLflow(Reporter):
    """Params, metrics per step, evaluations and artefacts as an MLflow run (local SQLite by default)."""

    name = "mlflow"
    Options = MLflowOptions

    def __init__(self, options):
        super().__init__(options)
        self.client = None
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.step = 0  # the last step reached: where after-training figures are logged
        self.logged_final: set[str] = set()
        self.levels: dict[str, int] = {}

    @classmethod
    def check(cls, options, recipe):
        modules = ("mlflow",)
        if options.tracking_uri is None or not options.tracking_uri.startswith(SERVERS):
            modules += ("sqlalchemy", "alembic")  # a database store; a server needs neither here
        problem = tracking.missing_extra("mlflow", modules, "mlflow")
        if problem:
            yield (("type",), problem)

    # -- set-up ----------------------------------------------------------------------------------
    def _quiet(self) -> None:
        for name in QUIET:
            logger = logging.getLogger(name)
            self.levels.setdefault(name, logger.level)
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))

    def _unquiet(self) -> None:
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        self.levels = {}

    def start(self, run):
        from mlflow.tracking import MlflowClient

        self._quiet()  # after the import: mlflow sets its logger's level as it loads
        try:
            self._start(MlflowClient, run)
        except BaseException:  # switched off by the run: no finish() will restore the levels
            self._unquiet()
            raise

    def _start(self, client_cls, run) -> None:
        self.run_dir = Path(run["run_dir"]).resolve()
        output = tracking.output_dir(run)
        uri = self.options.tracking_uri
        if uri is None:
            output.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{output / 'mlflow.db'}"
        self.client = client_cls(tracking_uri=uri)
        experiment = self._experiment(self.options.experiment or run["name"], output, uri)
        self.run_id = self._resumed(experiment)
        if self.run_id is not None:  # `finetune resume`: the same MLflow run goes on
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {
            "finetune.run_dir": str(self.run_dir),
            "finetune.recipe": str(run["name"]),
            "finetune.status": "running",
            "finetune.seed": str(run.get("seed")),
        }
        for field, value in (run.get("sweep") or {}).items():
            if field in ("study", "trial", "seed_of"):
                tags[f"sweep.{field}"] = str(value)
        tags.update(self.options.tags)
        created = self.client.create_run(
            experiment, run_name=self.options.run_name or self.run_dir.name, tags=self._clip_tags(tags)
        )
        self.run_id = created.info.run_id
        try:
            recipe = run.get("recipe") or {}
            self._params(recipe)
            self.client.log_text(self.run_id, tracking.recipe_toml(recipe), "recipe.toml")
        except Exception:
            self.client.set_terminated(self.run_id, "FAILED")  # never leave it "running" for ever
            raise

    def _experiment(self, name: str, output: Path, uri: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            location = (output / "mlartifacts").as_uri() if _is_local(uri) else None
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except Exception:  # another run (a parallel sweep trial) created it in between
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":  # its name is still taken: bring it back
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def _resumed(self, experiment: str) -> str | None:
        """The MLflow run an earlier attempt of this run directory started, if any."""
        if "'" in str(self.run_dir):
            return None  # cannot be quoted in a filter string: a resumed run gets a new MLflow run
        found = self.client.search_runs(
            [experiment], filter_string=f"tags.`finetune.run_dir` = '{self.run_dir}'", max_results=1
        )
        return found[0].info.run_id if found else None

    def _params(self, recipe: dict) -> None:
        from mlflow.entities import Param

        params = [
            Param(_clip(tracking.key(k), MAX_KEY), _clip(str(tracking.scalar(v)), MAX_PARAM_VALUE))
            for k, v in key_paths(recipe).items()
        ]
        params = list({p.key: p for p in params}.values())  # two keys clipped alike: keep one
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + PARAMS_PER_BATCH])

    @staticmethod
    def _clip_tags(tags: dict[str, str]) -> dict[str, str]:
        return {_clip(k, MAX_KEY): _clip(v, MAX_TAG_VALUE) for k, v in tags.items()}

    # -- events ----------------------------------------------------------------------------------
    def _metrics(self, values: dict[str, float], step: int) -> None:
        if self.client is None or not values:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_clip(k, MAX_KEY), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + METRICS_PER_BATCH])

    def train_begin(self, total_steps, start_step):
        self.step = max(self.step, start_step)

    def log(self, step, values):
        self.step = max(self.step, step)
        self._metrics({tracking.key("train", k): v for k, v in tracking.numbers(values).items()}, step)

    def evaluated(self, split, step, metrics):
        if step is not None:
            self.step = max(self.step, step)
        values = {tracking.key(split, k): v for k, v in tracking.shown(metrics).items()}
        if step is None:
            self.logged_final.update(values)
        self._metrics(values, self.step if step is None else step)

    def audited(self, name, passed, summary):
        if self.client is None:
            return
        verdict = {True: "passed", False: "failed", None: "measured"}[passed]
        self.client.set_tag(self.run_id, _clip(f"audit.{name}", MAX_KEY), _clip(f"{verdict}: {summary}", MAX_TAG_VALUE))
        if passed is not None:
            self._metrics({tracking.key("audits", name): float(passed)}, self.step)

    def finish(self, status, summary):
        if self.client is None or self.run_id is None:
            self._unquiet()
            return
        error = None
        steps = (
            lambda: self._final(summary),
            lambda: self._metrics(tracking.baselines(summary), 0),
            lambda: self._tags(status, summary),
            lambda: self._artifacts(status, summary),
        )
        for step in steps:  # each on its own: a failed upload must not lose the final metrics
            try:
                step()
            except Exception as exc:
                error = error or exc
        try:
            self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))
        finally:
            self.client = None
            self._unquiet()
        if error is not None:
            raise error  # the run goes on; Events shows it as this reporter's warning

    def _final(self, summary) -> None:
        """Final figures no evaluation event carried (the training totals: runtime, global_step)."""
        values = {
            tracking.key(split, k): v
            for split, metrics in tracking.final_metrics(summary).items()
            for k, v in metrics.items()
        }
        self._metrics({k: v for k, v in values.items() if k not in self.logged_final}, self.step)

    def _tags(self, status, summary) -> None:
        self.client.set_tag(self.run_id, "finetune.status", status)
        if summary.get("model_dir"):
            self.client.set_tag(self.run_id, "finetune.model_dir", _clip(str(summary["model_dir"]), MAX_TAG_VALUE))

    def _artifacts(self, status, summary) -> None:
        if status != "completed" or not self.options.artifacts:
            return
        report = Path(summary.get("run_dir") or self.run_dir) / "report.html"
        if report.is_file():
            self.client.log_artifact(self.run_id, str(report))
        model = summary.get("model_dir")
        if model and Path(model).is_dir():
            self.client.log_artifacts(self.run_id, str(model), "model")


@hookimpl
def register_reporters(register):
    register(MLflow)
