"""Run a whole study in this process: prepare, every run in turn, aggregate.

This is ``cxrstudy run`` and the engine of ``cxrstudy demo``. It writes the same keys as the
distributed path, so a study started here can be inspected with the same tools, and a run that
was interrupted resumes where it stopped when the command is repeated.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable

from jobs import aggregate, prepare, train
from jobs.errors import CxrStudyError
from jobs.store import Store
from jobs.study import JobSpec, Study, expand, study_id
from orchestrator.reporting import keep_baselines, read_study_baselines


def write_study(store: Store, study: Study, sid: str, data_prefix: str, jobs: list[JobSpec]) -> None:
    """``studies/<id>/study.json``: the spec as submitted and the expanded job list."""
    key = f"studies/{sid}/study.json"
    if store.exists(key):
        return  # same id = same content
    doc = {
        "study_id": sid,
        "spec": study.spec(),
        "data_prefix": data_prefix,
        "source": study.source,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "jobs": [j.to_json() for j in jobs],
    }
    store.put_text(key, json.dumps(doc, indent=2))


def run_study(study: Study, store: Store, log: Callable[[str], None] = print) -> tuple[str, str]:
    """Prepare, train every run, aggregate. Returns (study id, URL of report.md)."""
    baselines = read_study_baselines(study)  # a bad baseline file fails here, before hours of work
    manifest = prepare.run(study.dataset, store, study.preprocessing, study.dataset_id, log=log)
    sid = study_id(study, manifest["prep_hash"])
    jobs = expand(study, sid, manifest["prefix"])
    keep_baselines(store, sid, baselines, log)
    write_study(store, study, sid, manifest["prefix"], jobs)
    log(f"study {sid}: {len(jobs)} runs ({', '.join(f'{g.architecture} x {len(g.seeds)}' for g in study.runs)})")
    for i, job in enumerate(jobs, start=1):
        log(f"run {i}/{len(jobs)}: {job.architecture} seed {job.seed} ({job.job_id})")
        try:
            train.run(job, store, log=log)
        except CxrStudyError:
            raise  # a setting is wrong: every run would fail the same way
        except Exception as exc:  # one run broke (NaN loss, out of memory): record it, go on
            store.put_text(
                f"{job.prefix}/error.json",
                json.dumps(
                    {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                ),
            )
            log(f"run {i}/{len(jobs)} failed: {type(exc).__name__}: {exc}")
    return sid, aggregate.run(sid, store, log=log)
