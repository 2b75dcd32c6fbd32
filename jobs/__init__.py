"""The work itself, runnable without Celery or Kubernetes, one folder per concern.

- ``jobs.spec``: the study file, every setting as a dataclass, architecture names, ids (no torch).
- ``jobs.store``: the object-store client, every key of its layout, and what it records about a
  study: ``study.json``, each run's state (one function decides it), the terminal files (no torch).
- ``jobs.data``: the NIH reader, CLAHE, tar shards and their manifest, the loader, the synthetic set.
- ``jobs.training``: models (timm), losses, optimizer and schedule, checkpoints, the trainer (torch).
- ``jobs.scoring``: point metrics (scikit-learn), the bootstrap, DeLong, the predictions CSV.
- ``jobs.report``: the report's tables, seed analysis, comparisons, baselines, figures.

The three jobs are thin entry modules: ``jobs.prepare``, ``jobs.train``, ``jobs.aggregate`` (each also
``python -m jobs.<job>``). Nothing in this package imports ``worker`` or ``orchestrator``.
"""
