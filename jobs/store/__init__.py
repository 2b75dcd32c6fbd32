"""The object store: the source of truth for datasets, runs and reports.

- :mod:`jobs.store.backends`: the client (a local directory or ``s3://bucket/prefix``).
- :mod:`jobs.store.layout`: every key of the store, built in one place.
- :mod:`jobs.store.records`: what the store says about a study: ``study.json``, each run's state
  (decided by one function) and the one writer of each terminal file.

Nothing here imports torch, timm or OpenCV: the client commands read the store through this package.
"""

from jobs.store.backends import LocalStore, ObjectInfo, S3Store, Store, open_store, s3_client

__all__ = ["LocalStore", "ObjectInfo", "S3Store", "Store", "open_store", "s3_client"]
