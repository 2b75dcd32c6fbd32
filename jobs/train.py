"""The train job: one (architecture, seed) run, from shards in the store to ``result.json``.

A thin entry over :func:`jobs.training.trainer.run`. Debug a job on its own with
``python -m jobs.train --job job.json --store URI`` (a job is one entry of ``study.json``'s ``jobs``).
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.errors import CxrStudyError
from jobs.spec.runs import JobSpec
from jobs.store import open_store
from jobs.training.trainer import run

__all__ = ["main", "run"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description="Run one training job.")
    parser.add_argument("--job", required=True, help="job.json (one entry of study.json's 'jobs')")
    parser.add_argument("--store", required=True, help="store URI: a directory or s3://bucket/prefix")
    args = parser.parse_args(argv)
    try:
        with open(args.job) as fh:
            job = JobSpec.from_json(json.load(fh), args.job)
        run(job, open_store(args.store), log=lambda m: print(m, flush=True))
    except (CxrStudyError, OSError, json.JSONDecodeError) as exc:
        print(f"jobs.train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
