"""The Celery app. Celery is transport only: the tasks (``worker.tasks``) are thin shells over ``jobs``.

Every setting below is there because its default loses or duplicates GPU work:

- JSON only: a queue message must not be able to run code (no pickle).
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a job is acknowledged when it ends, so a
  worker that dies mid-run leaves its message to be redelivered, not lost.
- prefetch 1 and concurrency 1 per GPU: a worker never sits on a second job another GPU could run.
- ``visibility_timeout`` and kombu's restore sweep: how soon a dead worker's job is redelivered.
  Live jobs bump their message's delivery time with the lease heartbeat (``worker.coord``), so a
  job longer than the timeout is never redelivered while it runs.
- ``worker_max_tasks_per_child=1``: each job runs in a fresh child process; CUDA is initialised
  there and never in the parent, and GPU memory is returned when the job ends. A worker serving
  only the cpu queue is started with 50 tasks per child instead (``worker_command``): a new child
  costs seconds, and a prepare fans out into a task per shard.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from worker.coord import local_folder
from worker.settings import Settings

UNACKED_MUTEX_EXPIRE = 10  # seconds; see broker_config

TASK_QUEUES = {
    "cxrstudy.prepare": "cpu",
    "cxrstudy.prepare_shard": "cpu",
    "cxrstudy.train": "gpu",
    "cxrstudy.aggregate": "cpu",
}


def broker_config(settings: Settings) -> tuple[str, dict]:
    """The kombu URL and transport options for ``settings.broker_url``."""
    url = settings.broker_url
    if url.startswith("local://"):
        root = local_folder(url, "queue", "processed", "control")  # a one-line error when it cannot be written
        return "filesystem://", {
            "data_folder_in": str(root / "queue"),
            "data_folder_out": str(root / "queue"),
            "processed_folder": str(root / "processed"),
            "control_folder": str(root / "control"),  # kombu's default is ./control, in the caller's folder
            "store_processed": True,  # a rename inside one folder tree: atomic, so one consumer wins
            "polling_interval": 0.5,
        }
    return url, {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": settings.restore_interval,
        "unacked_restore_throttle": 1,
        # The restore sweep runs under a Redis lock that kombu keeps for 300 s: a worker killed (or
        # Redis restarted) while it held it stopped every redelivery for five minutes. A sweep takes
        # milliseconds, and each restore is a WATCH transaction, so a short lock is safe.
        "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE,
        "socket_connect_timeout": 5,
        "socket_timeout": 60,
        "health_check_interval": 30,
    }


def survive_broker_restart() -> None:
    """Keep a worker alive through a Redis restart (kombu 5.7).

    When the broker connection drops, Celery closes it; a Redis channel of that connection then
    restores its unacknowledged messages, or acks a job that just ended, through the connection that
    was dropped, and raises AttributeError (``'NoneType' object has no attribute 'hostname'``, or
    ``'client'``) instead of a connection error. Celery takes that for an unrecoverable error and the
    worker exits: a pod loses its job's progress since the last checkpoint. Raising redis's own
    ConnectionError there instead makes it what Celery and kombu expect, a lost connection: the ack or
    restore is logged and skipped (the message stays in Redis's unacked set, which the visibility
    sweep restores; a job that ended finds its result and does nothing) and the worker reconnects.
    """
    import redis
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "cxrstudy_guard", False):
        return

    def _connparams(self, asynchronous=False):
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was closed")
        return original(self, asynchronous=asynchronous)

    _connparams.cxrstudy_guard = True
    kombu_redis.Channel._connparams = _connparams


def make_app(settings: Settings) -> Celery:
    url, transport_options = broker_config(settings)
    app = Celery("cxrstudy", broker=url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,  # the store holds every result; Celery's are not needed
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_max_tasks_per_child=1,
        task_queues=[Queue("gpu"), Queue("cpu")],
        task_routes={name: {"queue": q} for name, q in TASK_QUEUES.items()},
        task_default_queue="cpu",
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=10,
        worker_cancel_long_running_tasks_on_connection_loss=False,  # the lease, not Celery, decides
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    app.cxrstudy_settings = settings
    return app


# For `celery -A worker.app worker`: configured from the environment.
survive_broker_restart()
app = make_app(Settings.from_env())
