"""Runs in MLflow, when the user has it: one parent run per study, one child run per job.

Tracking is on when a tracking URI is known: the study file's ``tracking.mlflow`` (kept with the
study as ``tracking.json``), else the worker's ``MLFLOW_TRACKING_URI`` (the chart's
``tracking.mlflowUri``). Nothing is logged, and mlflow is never imported, when neither is set.

- The parent run (tag ``cxrstudy.role=study``) carries the study's name, dataset and prep hash, the
  report as an artifact and a link to it in the store, and ends FINISHED when every run has ended.
  Workers find or create it on first need and keep its id in the store (``mlflow.json``). Workers
  that start together may each create one (MLflow has no create-if-absent): none is deleted while
  runs go on; the aggregate job settles it, keeping the earliest parent, moving the other parents'
  children under it and deleting the others.
- A child run per job (``mlflow.parentRunId``) carries the resolved config as params (``training.*``,
  ``preprocessing.*``, architecture, seed), the per-epoch metrics (step = epoch), the test metrics,
  ``result.json`` and ``provenance.json`` as artifacts with links to both in the store, and the tags
  ``cxrstudy.study_id``, ``cxrstudy.arm``, ``cxrstudy.seed``, ``cxrstudy.job_id``. A resumed attempt
  logs to the same child (its id is kept in the store).

The store stays the source of truth: MLflow is a view of it. A tracking failure (the server down,
a network policy, mlflow not installed, a tracking.json that cannot be read) is logged as one
warning line and tracking stops for that run; it never fails a run. The client's HTTP retries are
capped (one retry, 5 s timeout) so that a server that is down costs seconds, not minutes. A run
stopped to be resumed (SIGTERM, cancel, a lost lease) is KILLED until its resume sets it RUNNING
again. An epoch is logged after its checkpoint, so a resume trains again no epoch MLflow has, and each
attempt starts by logging the finished epochs MLflow missed: the history has one point per epoch, as
metrics.jsonl does. The exception is a resume from ``last.prev.pt`` (``last.pt`` damaged): MLflow's
history cannot be cut back, so the epochs trained again appear twice, and a tag names them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

from jobs.errors import DamagedArtifact
from jobs.spec.runs import JobSpec
from jobs.store import Store, layout
from jobs.store.records import metrics_lines, read_json, study_states, write_json

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "cxrstudy"
STUDY_TAG, ROLE_TAG, JOB_TAG = "cxrstudy.study_id", "cxrstudy.role", "cxrstudy.job_id"
PARENT_TAG = "mlflow.parentRunId"
# The client's defaults retry a refused connection for minutes; a run must not wait on its tracking.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


@dataclasses.dataclass(frozen=True)
class Target:
    uri: str
    experiment: str


def target(store: Store, study_id: str) -> Target | None:
    """Where a study's runs are tracked, or None when tracking is not configured."""
    settings = read_json(store, layout.tracking_key(study_id)) or {}  # a damaged one raises: see _Tracked
    uri = settings.get("mlflow") or os.environ.get(ENV_URI)
    if not uri:
        return None
    return Target(uri, settings.get("experiment") or os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT)


def flat_params(prefix: str, value) -> dict[str, str]:
    """A nested config as MLflow params: ``{"training.loss.args.gamma": "2.0", ...}``."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flat_params(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: str(value)[:6000]}  # MLflow's limit on a param value


class _Tracked:
    """What the study's and a run's trackers share: a client, and one warning when it fails."""

    def __init__(self, store: Store, study_id: str, log: Callable[[str], None], what: str):
        self.store, self.study_id, self.log, self.what = store, study_id, log, what
        self.client = None
        try:
            self.target = target(store, study_id)
        except Exception as exc:  # noqa: BLE001 - a tracking.json that cannot be read: no tracking, one warning
            self.target = None
            log(f"warning: MLflow tracking of {what} is off: its settings could not be read ({exc})")
        self.failed = self.target is None  # nothing to do when tracking is not configured

    def _call(self, action: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` unless tracking is off or has failed; a failure is one warning line, then off."""
        if self.failed:
            return
        try:
            if self.client is None:
                self.client = _client(self.target.uri)
            fn()
        except Exception as exc:  # noqa: BLE001 - any tracking failure: warn once, never fail the run
            self.failed = True
            detail = " ".join(str(exc).split())[:300] or type(exc).__name__
            self.log(
                f"warning: MLflow tracking of {self.what} stopped at {action} ({self.target.uri}): "
                f"{type(exc).__name__}: {detail}; the run goes on, its results are in the store"
            )

    def parent_id(self) -> str:
        """The study's parent run: kept in the store, else found or created (see the module's docstring)."""
        key = layout.mlflow_key(self.study_id)
        try:
            kept = read_json(self.store, key) or {}
        except DamagedArtifact:
            kept = {}
        if kept.get("uri") == self.target.uri and kept.get("experiment") == self.target.experiment:
            return kept["parent_run_id"]
        experiment_id = self.experiment_id()
        parents = self.parents(experiment_id)
        if not parents:
            doc = read_json(self.store, layout.study_key(self.study_id)) or {}
            spec = doc.get("spec") or {}
            created = self.client.create_run(
                experiment_id,
                run_name=f"study {self.study_id}",
                tags={STUDY_TAG: self.study_id, ROLE_TAG: "study", "cxrstudy.study_name": str(spec.get("name"))},
            )
            dataset = spec.get("dataset") or {}
            params = {"study.name": spec.get("name"), "study.dataset": dataset.get("location")}
            params["study.data_prefix"] = doc.get("data_prefix")
            if len(datasets := doc.get("datasets") or {}) > 1:  # variants with their own preprocessing
                params["study.datasets"] = ", ".join(datasets)
            _log_params(self.client, created.info.run_id, {k: str(v) for k, v in params.items()})
            parents = self.parents(experiment_id) or [created]
        chosen = parents[0].info.run_id  # racing workers may choose apart: the aggregate settles it
        record = {"uri": self.target.uri, "experiment": self.target.experiment, "parent_run_id": chosen}
        write_json(self.store, key, {**record, "experiment_id": experiment_id})
        return chosen

    def experiment_id(self) -> str:
        """The experiment's id, created when it does not exist (by whichever worker gets there first)."""
        experiment = self.client.get_experiment_by_name(self.target.experiment)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(self.target.experiment)
        except Exception:  # another worker created it in between (RESOURCE_ALREADY_EXISTS): use theirs
            experiment = self.client.get_experiment_by_name(self.target.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id

    def parents(self, experiment_id: str) -> list:
        """The study's live parent runs, earliest first."""
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{self.study_id}' and tags.`{ROLE_TAG}` = 'study'",
            max_results=50,
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


class RunTracker(_Tracked):
    """One job's child run. Every method is safe to call whether tracking is on, off or failed."""

    def __init__(self, store: Store, job: JobSpec, log: Callable[[str], None], arm: str | None = None):
        super().__init__(store, job.study_id, log, f"run {job.job_id}")
        self.job, self.arm = job, arm or job.arm
        self.run_id: str | None = None

    def start(self, preprocessing: dict | None = None) -> None:
        self._call("start", lambda: self._start(preprocessing or {}))

    def _start(self, preprocessing: dict) -> None:
        job, client = self.job, self.client
        try:
            kept = read_json(self.store, job.keys.mlflow) or {}
        except DamagedArtifact:
            kept = {}
        if kept.get("uri") == self.target.uri and kept.get("run_id"):
            self.run_id = kept["run_id"]
            client.update_run(self.run_id, status="RUNNING")
            if "cxrstudy.error" in client.get_run(self.run_id).data.tags:  # an earlier attempt's failure
                client.delete_tag(self.run_id, "cxrstudy.error")
            self._catch_up()
            return
        parent = self.parent_id()
        experiment_id = client.get_run(parent).info.experiment_id
        tags = {
            PARENT_TAG: parent,
            STUDY_TAG: job.study_id,
            JOB_TAG: job.job_id,
            ROLE_TAG: "run",
            "cxrstudy.arm": self.arm,
            "cxrstudy.architecture": job.architecture,
            "cxrstudy.seed": str(job.seed),
            "cxrstudy.store_prefix": self.store.url(job.keys.prefix),
        }
        run = client.create_run(experiment_id, run_name=f"{self.arm} seed {job.seed}", tags=tags)
        self.run_id = run.info.run_id
        write_json(self.store, job.keys.mlflow, {"uri": self.target.uri, "run_id": self.run_id})
        params = {"architecture": job.architecture, "seed": str(job.seed), "data_prefix": job.data_prefix}
        if job.variant is not None:
            params["variant"] = job.variant
        params.update(flat_params("training", job.training))
        params.update(flat_params("preprocessing", preprocessing))
        _log_params(client, self.run_id, params)
        self._catch_up()

    def _catch_up(self) -> None:
        """Bring the child's history in step with metrics.jsonl as this attempt starts (after the resume
        cut it back to the checkpoint): log the finished epochs MLflow never got (a worker killed between
        an epoch's last.pt and its log line, or an attempt whose tracking was down), and tag the epochs it
        has that this attempt trains again (a resume from an older checkpoint than the last logged epoch),
        since MLflow cannot take a metric point back."""
        records = [json.loads(line) for line in metrics_lines(self.store, self.job)]
        points = [m.step for m in self.client.get_metric_history(self.run_id, "train_loss")]
        for record in records:
            if record["epoch"] not in points:
                self._epoch(record)
        kept = max((r["epoch"] for r in records), default=0)
        # Epochs logged twice by earlier resumes, and those this attempt trains again.
        again = sorted({step for step in points if points.count(step) > 1 or step > kept})
        if again:
            self.client.set_tag(
                self.run_id,
                "cxrstudy.epochs_trained_again",
                f"{', '.join(map(str, again))}: resumed from an older checkpoint, these epochs' history holds every "
                "try (metrics.jsonl in the store holds the last)",
            )

    def epoch(self, record: dict) -> None:
        """One finished epoch's metrics.jsonl record, at step = epoch."""
        self._call(f"epoch {record.get('epoch')}", lambda: self._epoch(record))

    def _epoch(self, record: dict) -> None:
        values = {k: record.get(k) for k in ("train_loss", "val_loss", "val_avg_auroc", "lr", "seconds")}
        values.update({f"val_auroc.{c}": v for c, v in (record.get("val_auroc") or {}).items()})
        _log_metrics(self.client, self.run_id, values, step=int(record["epoch"]))

    def finish(self, result: dict, provenance: dict | None) -> None:
        """The test metrics, result.json and provenance.json (artifacts and store links), FINISHED."""
        self._call("the end of the run", lambda: self._finish(result, provenance))

    def _finish(self, result: dict, provenance: dict | None) -> None:
        client, keys, test = self.client, self.job.keys, result.get("test") or {}
        values = {f"test_{k}": test.get(k) for k in ("loss", "avg_auroc", "avg_f1", "avg_brier", "avg_ece")}
        for metric in ("auroc", "f1", "brier", "ece"):
            values.update({f"test_{metric}.{c}": v for c, v in (test.get(metric) or {}).items()})
        values["best_epoch"] = result.get("best_epoch")
        _log_metrics(client, self.run_id, values, step=int(result.get("best_epoch") or 0))
        client.log_dict(self.run_id, result, "result.json")
        client.set_tag(self.run_id, "cxrstudy.result", self.store.url(keys.result))
        if provenance is not None:
            client.log_dict(self.run_id, provenance, "provenance.json")
            client.set_tag(self.run_id, "cxrstudy.provenance", self.store.url(keys.provenance))
            gpu = ((provenance.get("environment") or {}).get("gpu") or {}).get("name")
            _log_metrics(client, self.run_id, {"gpu_hours": (provenance.get("gpu_seconds") or 0) / 3600}, step=0)
            if gpu:
                client.set_tag(self.run_id, "cxrstudy.gpu", gpu)
        client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, error: str) -> None:
        """The run failed: FAILED, with the error as a tag."""
        self._call("marking it failed", lambda: self._end("FAILED", error))

    def stopped(self) -> None:
        """The run stopped to be resumed later (SIGTERM, cancel, a lost lease): KILLED until then."""
        self._call("marking it stopped", lambda: self._end("KILLED"))

    def _end(self, status: str, error: str | None = None) -> None:
        if self.run_id is not None:
            if error is not None:
                self.client.set_tag(self.run_id, "cxrstudy.error", error[:5000])
            self.client.set_terminated(self.run_id, status=status)

    def settle(self, result: dict) -> None:
        """A run found done (result.json exists) whose MLflow run never ended (its worker died between
        result.json and the end of tracking): finish it now. Nothing when it was never tracked."""

        def settle() -> None:
            kept = read_json(self.store, self.job.keys.mlflow) or {}
            if kept.get("uri") != self.target.uri or not kept.get("run_id"):
                return
            if self.client.get_run(kept["run_id"]).info.status != "FINISHED":
                self.run_id = kept["run_id"]
                self._finish(result, read_json(self.store, self.job.keys.provenance))

        self._call("settling a finished run", settle)


class StudyTracker(_Tracked):
    """The study's parent run, from the aggregate job."""

    def __init__(self, store: Store, study_id: str, log: Callable[[str], None]):
        super().__init__(store, study_id, log, f"study {study_id}")

    def report(self, url: str) -> None:
        """The report as the parent's artifact and a link to it; once every run has ended, the parent is
        settled (one parent, every child under it) and FINISHED."""

        def log_report() -> None:
            _, states = study_states(self.store, self.study_id)
            ended = all(s.ended for s in states)
            if ended:  # one parent before anything is logged to it; runs whose tracking never ended, ended
                self.settle_parents()
                for state in states:
                    if state.state == "succeeded":
                        RunTracker(self.store, state.job, self.log).settle(state.detail)
            parent = self.parent_id()
            markdown = self.store.get_text(layout.report_markdown_key(self.study_id))
            self.client.log_text(parent, markdown, "report/report.md")
            self.client.set_tag(parent, "cxrstudy.report", url)
            if ended:
                self.client.set_terminated(parent, status="FINISHED")

        self._call("the report", log_report)

    def settle_parents(self) -> None:
        """Keep the earliest of the study's parent runs: move the others' children under it, delete them."""
        experiment_id = self.experiment_id()
        parents = self.parents(experiment_id)
        if len(parents) < 2:
            return
        keep = parents[0].info.run_id
        for extra in parents[1:]:
            children = self.client.search_runs(
                [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{extra.info.run_id}'", max_results=5000
            )
            for child in children:
                self.client.set_tag(child.info.run_id, PARENT_TAG, keep)
            self.client.delete_run(extra.info.run_id)
        kept = read_json(self.store, layout.mlflow_key(self.study_id)) or {}
        write_json(self.store, layout.mlflow_key(self.study_id), {**kept, "parent_run_id": keep})


def _client(uri: str):
    for name, value in CLIENT_ENV.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient  # the optional `mlflow` extra (mlflow-skinny); ImportError is a warning

    return MlflowClient(tracking_uri=uri)


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])


def _log_metrics(client, run_id: str, values: dict, step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
