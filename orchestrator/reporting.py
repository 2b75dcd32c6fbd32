"""``cxrstudy report``: a study's report again, with external baselines and the comparisons asked for.

Everything is checked before anything is written: every baseline file parses, every scorer named
in ``--compare`` exists (an architecture or arm, ``densenet121@plain``; ``architecture:seed``; a
baseline). Then the baselines are kept with the study (``studies/<id>/baselines/<name>.csv``), the options in
``studies/<id>/report_options.json``, and the aggregate job runs here, so later aggregates (a worker's
after ``resume``) keep them too.
"""

from __future__ import annotations

from collections.abc import Callable

from jobs import aggregate
from jobs.errors import ConfigError
from jobs.report.options import check_baseline_name, load_options, save_options, stored_baselines
from jobs.spec.configs import BOOTSTRAP_UNITS, MIN_RESAMPLES
from jobs.spec.runs import JobSpec
from jobs.store import Store, layout
from jobs.store.records import read_study, study_jobs
from orchestrator.submission import keep_baselines, read_baseline


def parse_baseline_option(text: str) -> tuple[str, str]:
    """``NAME=PREDICTIONS.csv`` -> (name, location)."""
    name, sep, location = text.partition("=")
    if not sep or not name or not location:
        raise ConfigError(f"--baseline {text!r}: write it as NAME=PREDICTIONS.csv (a path or s3://BUCKET/KEY)")
    return check_baseline_name(name, f"--baseline {text!r}"), location


def scorer_names(store: Store, sid: str, jobs: list[JobSpec], extra: list[str]) -> list[str]:
    """What ``--compare`` may name: each architecture, or arm (``densenet121@plain``: its seed ensemble),
    each run (``densenet121@plain:42``), each baseline."""
    names = list(dict.fromkeys(j.arm for j in jobs))
    names += [f"{j.arm}:{j.seed}" for j in jobs]
    return names + [n for n in [*stored_baselines(store, sid), *extra] if n not in names]


def report(
    sid: str,
    store: Store,
    baselines: list[str] = (),
    compare: list[list[str]] = (),
    resamples: int | None = None,
    log: Callable[[str], None] = print,
    bootstrap_unit: str | None = None,
) -> str:
    """Add baselines and comparisons to a study's report options, re-aggregate; returns report.md's text."""
    named = [parse_baseline_option(option) for option in baselines]  # the flags' own text first
    jobs = study_jobs(read_study(store, sid))  # a clear error for an unknown study, before any file is read
    files = [read_baseline(name, location) for name, location in named]
    options = load_options(store, sid)
    if resamples is not None:
        if resamples < MIN_RESAMPLES:
            raise ConfigError(f"--resamples {resamples}: use at least {MIN_RESAMPLES} (1,000 is the default)")
        options.resamples = resamples
    if bootstrap_unit is not None:
        if bootstrap_unit not in BOOTSTRAP_UNITS:
            raise ConfigError(f"--bootstrap-unit {bootstrap_unit}: use one of {', '.join(BOOTSTRAP_UNITS)}")
        options.bootstrap_unit = bootstrap_unit
    known = scorer_names(store, sid, jobs, [name for name, *_ in files])
    for name, *_ in files:
        if name in {j.arm for j in jobs} | {j.architecture for j in jobs}:
            raise ConfigError(f"--baseline {name}=...: {name!r} names an architecture of the study; pick another name")
    for a, b in compare:
        for label in (a, b):
            if label not in known:
                raise ConfigError(
                    f"--compare {a} {b}: no architecture, run or baseline {label!r}; known: {', '.join(known)}"
                )
        if a == b:
            raise ConfigError(f"--compare {a} {b}: compare two different scorers")
        if [a, b] not in options.compare:
            options.compare.append([a, b])
    keep_baselines(store, sid, files, log)
    save_options(store, sid, options)
    aggregate.run(sid, store, log=log, options=options, track=False)  # MLflow is the workers' to update
    return store.get_text(layout.report_markdown_key(sid))
