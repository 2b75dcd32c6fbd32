"""The Celery side of cxrstudy: the app (``worker.app``), its settings, the tasks and the
coordination (leases, attempts, fan-in claims) that make redelivered jobs safe."""
