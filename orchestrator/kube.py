"""The Kubernetes API client for ``cxrstudy cluster``: building it, calling it, and one-line errors.

Every failure a user can fix (no kubeconfig, an unknown context, an unreachable API server, RBAC
refusing a call) is a :class:`jobs.errors.ConfigError` naming what to fix.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from jobs.errors import ConfigError

T = TypeVar("T")

# (connect, read) seconds: an API server behind a dead VPN fails fast instead of hanging.
REQUEST_TIMEOUT = (5, 30)
RBAC_HINT = (
    "the account needs get/list on pods, nodes, deployments and patch on deployments/scale; "
    "see the chart's RBAC (rbac.create)"
)


def load_clients(context: str | None = None) -> tuple[client.CoreV1Api, client.AppsV1Api]:
    """API clients for the cluster: in-cluster config when ``KUBERNETES_SERVICE_HOST`` is set (the
    toolbox pod) and no ``context`` is named, else the kubeconfig (``$KUBECONFIG`` or
    ``~/.kube/config``) with ``context`` or its current context.

    Nothing is sent to the API server here: an unreachable server or an RBAC refusal surfaces from
    the first call, which :func:`call` (used by :mod:`orchestrator.cluster`) turns into a
    :class:`ConfigError` too.
    """
    configuration = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and context is None:
            config.load_incluster_config(client_configuration=configuration)
        else:
            # $KUBECONFIG is read now: the client reads it once, when it is imported.
            kubeconfig = os.environ.get("KUBECONFIG") or "~/.kube/config"
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration, persist_config=False
            )
    except ConfigException as exc:
        raise ConfigError(_config_message(exc, context)) from exc
    api = client.ApiClient(configuration)
    return client.CoreV1Api(api), client.AppsV1Api(api)


def _config_message(exc: ConfigException, context: str | None) -> str:
    detail = one_line(str(exc))
    if os.environ.get("KUBERNETES_SERVICE_HOST") and context is None:
        return (
            f"cannot use the pod's service account ({detail}): is automountServiceAccountToken off? "
            "Outside a pod, unset KUBERNETES_SERVICE_HOST to use a kubeconfig"
        )
    where = os.environ.get("KUBECONFIG") or "~/.kube/config"
    if context is not None and "contexts" in detail:
        return f"no context {context!r} in the kubeconfig {where}: list them with `kubectl config get-contexts`"
    return (
        f"cannot load the kubeconfig {where} ({detail}): set KUBECONFIG or --context, "
        "or check that `kubectl get pods` works"
    )


# --- status --------------------------------------------------------------------------------------


def call(
    api: client.CoreV1Api | client.AppsV1Api, what: str, method: Callable[..., T], *args: object, **kwargs: object
) -> T:
    """``method(*args, **kwargs)`` with a timeout; API and connection errors become one-line ConfigErrors."""
    with _api_errors(what, api.api_client.configuration.host):
        return method(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)


@contextmanager
def _api_errors(what: str, host: str) -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        raise ConfigError(api_error_message(exc, what, host)) from exc
    except urllib3.exceptions.HTTPError as exc:
        reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
        raise ConfigError(
            f"cannot reach the Kubernetes API server at {host} to {what} ({_connection_detail(reason)}): "
            "check the kubeconfig context (kubectl config current-context), the VPN, or the server address"
        ) from exc


def api_error_message(exc: ApiException, what: str, host: str) -> str:
    """One line for an API error: the status, what was being done, the server's message, what to fix."""
    message = _status_message(exc.body)
    said = f": {message}" if message else ""
    if exc.status == 0:
        return f"cannot talk to the Kubernetes API server at {host} to {what}: {one_line(str(exc.reason))}"
    if exc.status == 401:
        return (
            f"unauthorized (401) to {what}{said}: the API server rejected the credentials; "
            "refresh the kubeconfig login (e.g. run any kubectl command) and retry"
        )
    if exc.status == 403:
        return f"forbidden (403) to {what}{said}; {RBAC_HINT}"
    return f"Kubernetes API error {exc.status} {exc.reason} to {what}{said}"


def _status_message(body: object) -> str | None:
    """The ``message`` of a ``kind: Status`` body, when the body is one."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return None
    try:
        status = json.loads(body)
    except ValueError:
        return one_line(body)[:200]
    return one_line(str(status.get("message"))) if isinstance(status, dict) and status.get("message") else None


def _connection_detail(reason: object) -> str:
    # urllib3 prefixes the object's repr: "<...HTTPSConnection object at 0x7f...>: Failed to establish ...".
    return one_line(re.sub(r"^<[^>]*>:\s*", "", str(reason)))


def one_line(text: str) -> str:
    return " ".join(text.split())
