"""The aggregate job: every run of a study -> the comparison tables, under ``studies/<id>/report/``.

A thin entry over :func:`jobs.report.build.build`, whose docstring lists the files it writes.
``python -m jobs.aggregate STUDY_ID --store URI`` runs it as a worker does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from jobs.errors import CxrStudyError
from jobs.report.build import build
from jobs.report.options import ReportOptions, load_options
from jobs.store import Store, open_store
from jobs.tracking import StudyTracker


def run(
    study_id: str,
    store: Store,
    log: Callable[[str], None] = print,
    options: ReportOptions | None = None,
    track: bool = True,
) -> str:
    """Write the study's report; returns the URL of report.md (``options``: those kept with the study).
    With MLflow tracking configured and ``track`` (a worker's or ``cxrstudy run``'s aggregate, never
    ``cxrstudy report`` on a user's machine), the report goes to the study's parent run too."""
    url = build(study_id, store, log=log, options=options)
    if track:
        StudyTracker(store, study_id, log).report(url)
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.aggregate", description="Write a study's report.")
    parser.add_argument("study_id")
    parser.add_argument("--store", required=True)
    parser.add_argument("--resamples", type=int, help="bootstrap resamples (default: the study's, else 1000)")
    args = parser.parse_args(argv)
    try:
        store = open_store(args.store)
        options = load_options(store, args.study_id)
        if args.resamples:
            options.resamples = args.resamples
        run(args.study_id, store, options=options)
    except CxrStudyError as exc:
        print(f"jobs.aggregate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
