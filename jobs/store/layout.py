"""Every key of the store, built here and nowhere else.

::

    datasets/<dataset-id>/<prep-hash>/manifest.json
    datasets/<dataset-id>/<prep-hash>/shards/{train,val,test}-NNNNNN.tar
    datasets/<dataset-id>/<prep-hash>/plan/index.json         a fanned-out prepare's plan (written last)
    datasets/<dataset-id>/<prep-hash>/plan/<shard>.json       the records of one shard
    datasets/<dataset-id>/<prep-hash>/plan/<shard>.done.json  its manifest entry, once the shard is written
    studies/<study-id>/study.json                 the spec as submitted and the expanded job list
    studies/<study-id>/cancel.json                a cancel request (removed by resume and submit)
    studies/<study-id>/report_options.json        what `cxrstudy report` asked for
    studies/<study-id>/tracking.json              the study file's `tracking:` (MLflow), for the workers
    studies/<study-id>/mlflow.json                the study's MLflow parent run, once resolved
    studies/<study-id>/baselines/<name>.csv       external baselines' predictions
    studies/<study-id>/report/<file>              report.md, the CSVs, report.json
    studies/<study-id>/aggregate_error.json       why the last aggregate job failed (removed when one succeeds)
    studies/<study-id>/report/figures/<name>.png
    studies/<study-id>/jobs/<job-id>/...          see :class:`JobKeys`

Keys are ``/``-separated and relative to the store's root. User text (a dataset id, a study id, a
baseline name, a ``store:`` weights key) enters a key only here, checked by :func:`segment` or
:func:`weights_key`, so no key leaves the store's root; the backends refuse such a key again
(:func:`key_problem`), whoever built it.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.errors import StoreError

DATASETS = "datasets"
STUDIES = "studies"


# --- what a key may be ------------------------------------------------------------------------------
def key_problem(key: str, *, prefix: bool = False) -> str | None:
    """Why ``key`` would not name an object under the store's root (None: it would).

    A key is relative (no leading ``/``), its ``/``-separated segments are non-empty and neither
    ``.`` nor ``..``: a local store would leave its folder on ``..``, and S3 keeps ``a//b`` and
    ``a/./b`` as different objects from ``a/b``. A listing ``prefix`` may be empty or end in ``/``.
    """
    if "\0" in key:
        return "contains a NUL character"
    if key.startswith("/"):
        return "is absolute (starts with '/')"
    parts = key.split("/")
    if prefix and parts[-1] == "":
        parts.pop()  # "studies/" lists a folder; "" lists everything
    elif not key:
        return "is empty"
    if "" in parts:
        return "has an empty segment ('//' or a '/' at the end)"
    for part in parts:
        if part in (".", ".."):
            return f"has a {part!r} segment"
    return None


def segment(value: str, what: str) -> str:
    """``value`` when it can be one segment of a key (a name, never a path); else a StoreError naming ``what``."""
    if not isinstance(value, str) or "/" in value or key_problem(value):
        raise StoreError(f"{what} {value!r}: must be a single name (no '/', not '.' or '..'), not a path")
    return value


# --- prepared datasets ------------------------------------------------------------------------------
def dataset_prefix(dataset_id: str, prep_hash: str) -> str:
    return f"{DATASETS}/{segment(dataset_id, 'dataset id')}/{segment(prep_hash, 'prep hash')}"


def manifest_key(data_prefix: str) -> str:
    return f"{data_prefix}/manifest.json"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def shards_prefix(data_prefix: str) -> str:
    return f"{data_prefix}/shards/"


def shard_key(data_prefix: str, name: str) -> str:
    return f"{shards_prefix(data_prefix)}{name}"


def plan_prefix(data_prefix: str) -> str:
    """A prepare spread over CPU workers (:mod:`jobs.data.fanout`): its plan and each shard's mark."""
    return f"{data_prefix}/plan/"


def plan_index_key(data_prefix: str) -> str:
    return f"{plan_prefix(data_prefix)}index.json"


def plan_shard_key(data_prefix: str, name: str) -> str:
    return f"{plan_prefix(data_prefix)}{segment(name, 'shard name')}.json"


def plan_done_key(data_prefix: str, name: str) -> str:
    return f"{plan_prefix(data_prefix)}{segment(name, 'shard name')}.done.json"


def plan_done_name(key: str) -> str | None:
    """The shard name of a ``plan/<shard>.done.json`` key; None for any other key."""
    name = key.rsplit("/", 1)[-1]
    return name.removesuffix(".done.json") if name.endswith(".done.json") else None


# --- studies ----------------------------------------------------------------------------------------
def studies_prefix() -> str:
    return f"{STUDIES}/"


def study_prefix(study_id: str) -> str:
    return f"{STUDIES}/{segment(study_id, 'study id')}"


def study_folder(study_id: str) -> str:
    """Everything of one study (its runs' files too) is under this prefix: one listing shows it all."""
    return f"{study_prefix(study_id)}/"


def study_key(study_id: str) -> str:
    return f"{study_prefix(study_id)}/study.json"


def study_id_of(key: str) -> str | None:
    """The study id of a ``studies/<id>/study.json`` key; None for any other key."""
    parts = key.split("/")
    return parts[1] if len(parts) == 3 and parts[0] == STUDIES and parts[2] == "study.json" else None


def cancel_key(study_id: str) -> str:
    return f"{study_prefix(study_id)}/cancel.json"


def options_key(study_id: str) -> str:
    return f"{study_prefix(study_id)}/report_options.json"


def tracking_key(study_id: str) -> str:
    """The study file's ``tracking:`` settings, for the workers."""
    return f"{study_prefix(study_id)}/tracking.json"


def mlflow_key(study_id: str) -> str:
    """The study's MLflow parent run (tracking URI, experiment and run id), once a worker resolved it."""
    return f"{study_prefix(study_id)}/mlflow.json"


def baselines_prefix(study_id: str) -> str:
    return f"{study_prefix(study_id)}/baselines/"


def baseline_key(study_id: str, name: str) -> str:
    return f"{baselines_prefix(study_id)}{segment(name, 'baseline name')}.csv"


def aggregate_error_key(study_id: str) -> str:
    return f"{study_prefix(study_id)}/aggregate_error.json"


def report_prefix(study_id: str) -> str:
    return f"{study_prefix(study_id)}/report/"


def report_key(study_id: str, name: str) -> str:
    """A report file: ``report.md``, ``report.json``, a CSV, or ``figures/<name>.png``."""
    return f"{report_prefix(study_id)}{name}"


def report_markdown_key(study_id: str) -> str:
    """``report.md``: written last, so its presence means the report is complete."""
    return report_key(study_id, "report.md")


def report_json_key(study_id: str) -> str:
    return report_key(study_id, "report.json")


# --- one run ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobKeys:
    """The keys of one run under ``studies/<study-id>/jobs/<job-id>/``."""

    prefix: str

    @property
    def result(self) -> str:  # written last: present means done
        return f"{self.prefix}/result.json"

    @property
    def error(self) -> str:  # the last failure; ``final`` when no attempt is left
        return f"{self.prefix}/error.json"

    @property
    def cancelled(self) -> str:
        return f"{self.prefix}/cancelled.json"

    @property
    def progress(self) -> str:  # worker, epoch, step, latest val AUROC (while it runs)
        return f"{self.prefix}/progress.json"

    @property
    def fence(self) -> str:  # the fencing token of the last worker that acquired the job
        return f"{self.prefix}/fence.json"

    @property
    def provenance(self) -> str:  # versions, hardware, attempts and seconds of the run
        return f"{self.prefix}/provenance.json"

    @property
    def mlflow(self) -> str:  # the run's MLflow run id, so a resumed attempt logs to the same run
        return f"{self.prefix}/mlflow.json"

    @property
    def metrics(self) -> str:  # one line per finished epoch
        return f"{self.prefix}/metrics.jsonl"

    def checkpoint(self, name: str) -> str:  # last.pt, last.prev.pt or best.pt
        return f"{self.prefix}/checkpoints/{name}"

    def set_aside(self, name: str, stamp: str) -> str:  # a checkpoint that could not be read, kept as evidence
        return f"{self.checkpoint(name)}.damaged-{stamp}"

    def predictions(self, split: str) -> str:  # val or test
        return f"{self.prefix}/predictions_{split}.csv"


def job_keys(study_id: str, job_id: str) -> JobKeys:
    return JobKeys(f"{study_prefix(study_id)}/jobs/{segment(job_id, 'job id')}")


# --- objects the user names -------------------------------------------------------------------------
def weights_key(weights: str) -> str:
    """The key of ``training.weights: store:KEY``: a state dict the user put in the store, never outside it."""
    key = weights.removeprefix("store:")
    problem = key_problem(key)
    if problem:
        raise StoreError(
            f"training.weights {weights!r}: the key {problem}; name an object inside the store, "
            "like store:models/densenet121.pth"
        )
    return key
