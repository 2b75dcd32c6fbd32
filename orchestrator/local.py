"""Run a whole study in this process: prepare, every run in turn, aggregate.

This is ``cxrstudy run``. It writes the same keys as the distributed path, so a study started here
can be inspected with the same tools, and a run that was interrupted resumes where it stopped when
the command is repeated. It needs the training stack (``pip install 'cxrstudy[train]'``).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from jobs import aggregate, prepare, train
from jobs.errors import CxrStudyError, DamagedArtifact
from jobs.spec.study import Study
from jobs.store import Store
from jobs.store.records import SUCCEEDED, RunState, clear_ending, run_state, write_error
from orchestrator.submission import register


def run_study(study: Study, store: Store, log: Callable[[str], None] = print) -> tuple[str, str, list[RunState]]:
    """Prepare, train every run, aggregate. Returns (study id, URL of report.md, the runs that did not succeed)."""
    registered = register(study, store, log)
    for data_prefix, config in registered.datasets.items():  # one prepared dataset per distinct preprocessing
        manifest = prepare.run(study.dataset, store, config, study.dataset_id, log=log)
        if manifest["prefix"] != data_prefix:
            raise CxrStudyError(
                f"the dataset changed while it was prepared ({data_prefix} -> {manifest['prefix']}); run again"
            )
    jobs, failed = registered.jobs, []
    for i, job in enumerate(jobs, start=1):
        log(f"run {i}/{len(jobs)}: {job.arm} seed {job.seed} ({job.job_id})")
        if run_state(store, job).state != SUCCEEDED:
            clear_ending(store, job)  # as `resume` does: a failed, cancelled or damaged ending is run again
        try:
            train.run(job, store, log=log)
        except DamagedArtifact as exc:  # this run's file (its best.pt): the message says what to do
            write_error(store, job, str(exc), final=True)
            log(f"run {i}/{len(jobs)} failed: {exc}")
        except CxrStudyError:
            raise  # a setting is wrong: every run would fail the same way
        except Exception as exc:  # one run broke (NaN loss, out of memory): record it, go on
            write_error(store, job, f"{type(exc).__name__}: {exc}", final=True, traceback=traceback.format_exc())
            log(f"run {i}/{len(jobs)} failed: {type(exc).__name__}: {exc}")
        if (state := run_state(store, job)).state != SUCCEEDED:
            failed.append(state)
    return registered.study_id, aggregate.run(registered.study_id, store, log=log), failed
