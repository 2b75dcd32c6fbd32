"""The work itself, runnable without Celery or Kubernetes.

Dataset reading, CLAHE + sharding, the streaming loader, the model factory, losses, metrics,
the prepare / train / aggregate jobs, the object-store client and the study spec. Nothing in
this package imports ``worker`` or ``orchestrator``.
"""
