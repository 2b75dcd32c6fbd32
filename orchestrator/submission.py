"""Registering a study in the store: the one sequence that ``cxrstudy submit`` and ``cxrstudy run`` share.

Everything that can fail on the user's input is checked before anything is written: the study file
(already parsed), every baseline file, the dataset's metadata and split lists. Then the baselines are
kept with the study and ``study.json`` is written (idempotent: same content, same id).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from jobs.data.manifest import plan_all
from jobs.report.options import keep_baseline, load_options, save_options
from jobs.scoring.predictions import read_location, read_prediction_csv
from jobs.spec.configs import PrepConfig
from jobs.spec.runs import JobSpec
from jobs.spec.study import Study, expand, prep_hash_of, study_id
from jobs.store import Store, layout
from jobs.store.records import write_json, write_study


def read_baseline(name: str, location: str) -> tuple[str, bytes, str, int]:
    """``(name, bytes, where, rows)`` of a baseline file, read where the caller can read it; it must parse."""
    data, where = read_location(location)
    names, _ = read_prediction_csv(data, where)
    return name, data, where, len(names)


def read_study_baselines(study: Study) -> list[tuple[str, bytes, str, int]]:
    """The study file's ``baselines:``, each read and checked before anything of the study is written."""
    return [read_baseline(name, location) for name, location in study.baselines]


def keep_baselines(
    store: Store, sid: str, files: list[tuple[str, bytes, str, int]], log: Callable[[str], None]
) -> None:
    """Keep baseline files (from :func:`read_baseline`) with the study, where every later aggregate finds them."""
    for name, data, where, rows in files:
        keep_baseline(store, sid, name, data)
        log(f"study {sid}: baseline {name} ({rows:,} rows of {where}) kept for the report")


def keep_report_settings(store: Store, sid: str, study: Study) -> None:
    """The study file's ``report:`` settings, kept with the study's report options (what it leaves unset
    keeps what ``cxrstudy report`` stored before)."""
    settings = study.report
    if settings.bootstrap_unit is None and settings.resamples is None:
        return
    options = load_options(store, sid)
    options.bootstrap_unit = settings.bootstrap_unit or options.bootstrap_unit
    options.resamples = settings.resamples or options.resamples
    save_options(store, sid, options)


def keep_tracking_settings(store: Store, sid: str, study: Study) -> None:
    """The study file's ``tracking:`` (MLflow), where the workers read it; a study file without it
    removes settings an earlier submission kept (the file says what is tracked)."""
    key = layout.tracking_key(sid)
    if study.tracking.mlflow is None and study.tracking.experiment is None:
        if store.exists(key):
            store.delete(key)
        return
    write_json(store, key, {"mlflow": study.tracking.mlflow, "experiment": study.tracking.experiment})


@dataclass(frozen=True)
class Registered:
    study_id: str
    datasets: dict[str, PrepConfig]  # datasets/<id>/<prep-hash> (where prepare writes the shards) -> its config
    jobs: list[JobSpec]

    def jobs_on(self, data_prefix: str) -> list[JobSpec]:
        """The runs that train on one prepared dataset."""
        return [j for j in self.jobs if j.data_prefix == data_prefix]


def register(study: Study, store: Store, log: Callable[[str], None] = print) -> Registered:
    """Check the study's inputs, then write its baselines and ``study.json``; returns its id and jobs."""
    baselines = read_study_baselines(study)  # a bad baseline file fails here, before anything is written
    prefixes = plan_all(study.dataset, study.preprocessings(), study.dataset_id, log=log)
    sid = study_id(study, {p: prep_hash_of(prefix) for p, prefix in prefixes.items()})
    jobs = expand(study, sid, prefixes)
    keep_baselines(store, sid, baselines, log)
    keep_report_settings(store, sid, study)
    keep_tracking_settings(store, sid, study)
    datasets = {prefix: p for p, prefix in prefixes.items()}
    write_study(store, study.spec(), sid, jobs[0].data_prefix, jobs, study.source, datasets if study.variants else None)
    arms = Counter(j.arm for j in jobs)
    more = f" on {len(datasets)} prepared datasets" if len(datasets) > 1 else ""
    log(f"study {sid}: {len(jobs)} runs ({', '.join(f'{arm} x {n}' for arm, n in arms.items())}){more}")
    return Registered(sid, datasets, jobs)
