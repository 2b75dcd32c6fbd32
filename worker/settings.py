"""Worker and CLI settings, from the environment; command-line flags override them.

    CXRSTUDY_BROKER_URL        redis://[:password@]host:6379/0, or local:///path (no server; the demo)
    CXRSTUDY_STORE             s3://bucket/prefix or a directory
    CXRSTUDY_VISIBILITY_TIMEOUT  seconds before an unacknowledged job of a dead worker is redelivered
    CXRSTUDY_RESTORE_INTERVAL  seconds between the sweeps that redeliver such jobs
    CXRSTUDY_LEASE_TTL         seconds a job's lease lives without a heartbeat (heartbeat: a third of it)
    CXRSTUDY_MAX_ATTEMPTS      a job that failed this many times is recorded as failed
    CXRSTUDY_SIGTERM_GRACE     seconds between SIGTERM and exit (Kubernetes terminationGracePeriodSeconds)
    CXRSTUDY_PROGRESS_INTERVAL seconds between progress writes to the store (and cancel checks)
    CXRSTUDY_RETRY_BACKOFF     seconds before the second attempt of a failed job; doubles per attempt
    CXRSTUDY_RETRY_BACKOFF_MAX the longest wait between attempts

S3 settings are boto3's own: AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) names a non-AWS endpoint,
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION the rest.

A running job's lease heartbeat also keeps its queue message invisible, so the visibility timeout
only bounds how long a *dead* worker's job waits: 300 s in production, a few seconds in tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from jobs.errors import ConfigError

ENV = {
    "broker_url": "CXRSTUDY_BROKER_URL",
    "store": "CXRSTUDY_STORE",
    "visibility_timeout": "CXRSTUDY_VISIBILITY_TIMEOUT",
    "restore_interval": "CXRSTUDY_RESTORE_INTERVAL",
    "lease_ttl": "CXRSTUDY_LEASE_TTL",
    "max_attempts": "CXRSTUDY_MAX_ATTEMPTS",
    "sigterm_grace": "CXRSTUDY_SIGTERM_GRACE",
    "progress_interval": "CXRSTUDY_PROGRESS_INTERVAL",
    "retry_backoff": "CXRSTUDY_RETRY_BACKOFF",
    "retry_backoff_max": "CXRSTUDY_RETRY_BACKOFF_MAX",
}


@dataclass(frozen=True)
class Settings:
    broker_url: str = ""
    store: str = ""
    visibility_timeout: float = 300.0
    restore_interval: float = 10.0
    lease_ttl: float = 60.0
    max_attempts: int = 3
    sigterm_grace: float = 120.0
    progress_interval: float = 30.0
    retry_backoff: float = 30.0
    retry_backoff_max: float = 600.0

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = {}
        for f in fields(cls):
            raw = os.environ.get(ENV[f.name])
            if raw in (None, ""):
                continue
            try:
                values[f.name] = type(getattr(cls, f.name))(raw) if f.name not in ("broker_url", "store") else raw
            except ValueError:
                raise ConfigError(f"{ENV[f.name]}={raw!r}: not a number") from None
        values.update({k: v for k, v in overrides.items() if v not in (None, "")})
        s = replace(cls(), **values)
        positive = ("visibility_timeout", "restore_interval", "lease_ttl", "sigterm_grace", "progress_interval")
        for name in (*positive, "retry_backoff", "retry_backoff_max"):
            if getattr(s, name) <= 0:
                raise ConfigError(f"{ENV[name]}: must be positive (got {getattr(s, name)})")
        if s.max_attempts < 1:
            raise ConfigError(f"{ENV['max_attempts']}: must be at least 1 (got {s.max_attempts})")
        return s

    @property
    def stale_after(self) -> float:
        """A running job's progress.json older than this means its worker is gone."""
        return 3 * max(self.progress_interval, self.lease_ttl / 3)

    def retry_delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before the attempt after failed ``attempt`` (1, 2, ...): exponential backoff
        with equal jitter, ``b/2 + rand * b/2`` for ``b = retry_backoff * 2**(attempt-1)`` (``rand``
        in [0, 1)), so waits grow and workers that failed together do not retry together. Capped at
        ``retry_backoff_max`` and, on Redis, below the visibility timeout: a retry waits in its
        worker unacknowledged, and one held past the timeout would be delivered to another early."""
        cap = self.retry_backoff_max
        if not self.broker_url.startswith("local://"):
            cap = min(cap, 0.9 * self.visibility_timeout)
        b = min(cap, self.retry_backoff * 2 ** max(0, attempt - 1))
        return b / 2 + rand * b / 2

    def need(self, *names: str) -> Settings:
        """Raise a one-line error naming the flag and variable of each missing setting."""
        for name in names:
            if not getattr(self, name):
                flag = "--broker" if name == "broker_url" else "--store"
                raise ConfigError(f"no {name.replace('_', ' ')}: pass {flag} or set {ENV[name]}")
        return self

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for worker processes started by the CLI."""
        return {ENV[f.name]: str(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) != ""}
