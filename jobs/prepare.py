"""The prepare job: an NIH-format dataset -> CLAHE tar shards + manifest in the store.

A thin entry over :func:`jobs.data.sharding.prepare`. ``python -m jobs.prepare`` is what the prepare
task runs, in a process of its own (Celery's pool children are daemonic and may not start the
process pool CLAHE is spread over); it prints ``prefix: datasets/<id>/<hash>`` when done.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.data.sharding import prepare as run
from jobs.errors import CxrStudyError
from jobs.spec.configs import PrepConfig
from jobs.spec.schema import build
from jobs.spec.study import check_option_name
from jobs.store import open_store

__all__ = ["main", "run"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.prepare", description="CLAHE shards of an NIH dataset.")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--config", default="{}", help="PrepConfig fields as JSON (study.json's preprocessing)")
    parser.add_argument("--dataset-id")
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    try:
        check_option_name(args.dataset_id, "--dataset-id")
        config = build(PrepConfig, json.loads(args.config), "--config")
        manifest = run(
            args.dataset,
            open_store(args.store),
            config,
            args.dataset_id,
            args.workers,
            log=lambda m: print(m, flush=True),
        )
    except (CxrStudyError, ValueError) as exc:
        print(f"jobs.prepare: error: {exc}", file=sys.stderr)
        return 2
    print(f"prefix: {manifest['prefix']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
