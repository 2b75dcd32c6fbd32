"""``cxrstudy cluster status`` and ``cxrstudy cluster scale``: the Helm release as Kubernetes sees it.

Both commands use the official ``kubernetes`` client and return text; nothing here prints.

- :func:`cluster_status` lists the release's pods grouped by queue (GPU workers, CPU workers, the
  rest), its worker Deployments (desired / ready), the nodes with allocatable ``nvidia.com/gpu`` and
  how many of those GPUs the release's pods hold, and the queue depths when the caller could read them.
- :func:`scale_gpu_workers` patches the scale of the GPU-worker Deployment, unless KEDA owns it.
- :func:`orchestrator.kube.load_clients` builds the API clients (and turns API errors into one line).

Every failure a user can fix (no kubeconfig, an unknown context, an unreachable API server, RBAC
refusing a call) is a one-line :class:`jobs.errors.ConfigError` naming what to fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.utils.quantity import parse_quantity

from jobs.errors import ConfigError
from orchestrator.kube import call, one_line

APP = "cxrstudy"
GPU = "nvidia.com/gpu"
COMPONENT_LABEL = "app.kubernetes.io/component"
KEDA_ANNOTATION = "cxrstudy.io/keda"
# Queue name -> the component label of the workers that consume it.
WORKER_COMPONENTS = {"gpu": "gpu-worker", "cpu": "cpu-worker"}


def cluster_status(
    core: client.CoreV1Api,
    apps: client.AppsV1Api,
    namespace: str,
    release: str,
    queue_depths: dict[str, int] | None = None,
    *,
    now: datetime | None = None,
) -> str:
    """The release's pods by queue, its worker Deployments, the GPU nodes and the queue depths, as text.

    ``now`` (timezone-aware; default: the current time) is what the pods' ages are measured against.
    """
    now = now or datetime.now(UTC)
    selector = release_selector(release)
    pods = call(
        core, f"list pods in namespace {namespace}", core.list_namespaced_pod, namespace, label_selector=selector
    )
    deployments = call(
        apps,
        f"list deployments in namespace {namespace}",
        apps.list_namespaced_deployment,
        namespace,
        label_selector=selector,
    )
    pods, deployments = sorted(pods.items, key=_name), sorted(deployments.items, key=_name)
    if not pods and not deployments:
        return (
            f"no cxrstudy pods for release {release} in namespace {namespace}: "
            f"is the chart installed? (helm list -n {namespace})"
        )
    by_component = {_component(d): d for d in deployments}
    lines = [f"release {release} in namespace {namespace}"]
    if not pods:
        lines.append("no pods: the deployments exist but run no pods (scaled to zero?)")
    lines += ["", *_deployment_lines(by_component)]
    lines += _pod_sections(pods, by_component, now)
    lines += ["", *_gpu_lines(core, pods)]
    lines += ["", _queue_line(queue_depths, namespace, pods, by_component)]
    return "\n".join(lines)


def release_selector(release: str, component: str | None = None) -> str:
    """The label selector of the release's objects (of one component when given)."""
    selector = f"app.kubernetes.io/name={APP},app.kubernetes.io/instance={release}"
    return f"{selector},{COMPONENT_LABEL}={component}" if component else selector


def _deployment_lines(by_component: dict[str, client.V1Deployment]) -> list[str]:
    rows = []
    for component in WORKER_COMPONENTS.values():
        deployment = by_component.get(component)
        if deployment is None:
            rows.append([component, "-", "no deployment"])
            continue
        desired = deployment.spec.replicas if deployment.spec.replicas is not None else 1
        ready = (deployment.status.ready_replicas if deployment.status else None) or 0
        keda = " (KEDA-managed)" if _keda_managed(deployment) else ""
        rows.append([component, deployment.metadata.name, f"{desired} desired, {ready} ready{keda}"])
    return ["deployments:", *_table(rows)]


def _pod_sections(pods: list[client.V1Pod], by_component: dict[str, client.V1Deployment], now: datetime) -> list[str]:
    lines: list[str] = []
    for queue, component in WORKER_COMPONENTS.items():
        group = [p for p in pods if _component(p) == component]
        title = f"{component.removesuffix('-worker')} workers (queue {queue}):"
        lines += ["", title, *_pod_table(group, now, empty=_no_pods_note(by_component.get(component)))]
    others = [p for p in pods if _component(p) not in WORKER_COMPONENTS.values()]
    if others:
        lines += ["", "other pods:", *_pod_table(others, now, empty="  none")]
    return lines


def _no_pods_note(deployment: client.V1Deployment | None) -> str:
    if deployment is not None and deployment.spec.replicas == 0:
        return "  no pods (the deployment is scaled to 0)"
    return "  no pods"


def _pod_table(pods: list[client.V1Pod], now: datetime, empty: str) -> list[str]:
    if not pods:
        return [empty]
    header = ["NAME", "PHASE", "READY", "REASON", "NODE", "RESTARTS", "AGE"]
    rows = [header] + [_pod_row(p, now) for p in pods]
    details = [None] + [_pod_detail(p) for p in pods]
    lines = []
    for line, detail in zip(_table(rows), details):
        lines.append(line)
        if detail:
            lines.append(f"      {detail}")
    return lines


def _pod_row(pod: client.V1Pod, now: datetime) -> list[str]:
    status = pod.status or client.V1PodStatus()
    containers = status.container_statuses or []
    ready = "ready" if containers and all(c.ready for c in containers) else "not ready"
    restarts = sum(c.restart_count or 0 for c in containers)
    age = human_duration(now - pod.metadata.creation_timestamp) if pod.metadata.creation_timestamp else "-"
    node = (pod.spec.node_name if pod.spec else None) or "-"
    return [pod.metadata.name, status.phase or "Unknown", ready, pod_reason(pod) or "-", node, str(restarts), age]


def pod_reason(pod: client.V1Pod) -> str | None:
    """Why a pod is not simply running, as kubectl's STATUS column shows it: Terminating, Evicted,
    a container's waiting reason (CrashLoopBackOff, ImagePullBackOff, ContainerCreating), or the
    scheduler's reason (Unschedulable); ``None`` when there is nothing to say."""
    if pod.metadata.deletion_timestamp:
        return "Terminating"
    status = pod.status or client.V1PodStatus()
    if status.reason:
        return status.reason
    for container in _container_statuses(status):
        if container.state and container.state.waiting and container.state.waiting.reason:
            return container.state.waiting.reason
    scheduled = _condition(status, "PodScheduled")
    if scheduled is not None and scheduled.status == "False":
        return scheduled.reason or "NotScheduled"
    return None


def _pod_detail(pod: client.V1Pod) -> str | None:
    """A second line for a pod in trouble: the scheduler's message, or how the last run ended."""
    status = pod.status or client.V1PodStatus()
    scheduled = _condition(status, "PodScheduled")
    if scheduled is not None and scheduled.status == "False" and scheduled.message:
        return one_line(scheduled.message)
    for container in _container_statuses(status):
        waiting = container.state.waiting if container.state else None
        if waiting is None:
            continue
        last = container.last_state.terminated if container.last_state else None
        if waiting.reason == "CrashLoopBackOff" and last is not None:
            return f"{container.name}: last exit {last.reason or 'Error'} (exit code {last.exit_code})"
        if waiting.reason != "CrashLoopBackOff" and waiting.message:
            return f"{container.name}: {one_line(waiting.message)}"
    return None


def _container_statuses(status: client.V1PodStatus) -> list[client.V1ContainerStatus]:
    return [*(status.init_container_statuses or []), *(status.container_statuses or [])]


def _condition(status: client.V1PodStatus, kind: str) -> client.V1PodCondition | None:
    return next((c for c in status.conditions or [] if c.type == kind), None)


def _gpu_lines(core: client.CoreV1Api, pods: list[client.V1Pod]) -> list[str]:
    """Nodes with allocatable GPUs and the GPUs the release's pods hold there. A 403 on nodes (a
    cluster-scoped resource: namespace-only accounts cannot list them) costs this section only."""
    try:
        nodes = call(core, "list nodes", core.list_node)
    except ConfigError as exc:
        if not isinstance(exc.__cause__, ApiException) or exc.__cause__.status != 403:
            raise
        return ["GPU nodes: unavailable (forbidden to list nodes; the chart's ClusterRole grants it: rbac.create)"]
    held: dict[str, int] = {}
    unscheduled = 0
    for pod in pods:
        if (pod.status and pod.status.phase) in ("Succeeded", "Failed"):
            continue
        node = pod.spec.node_name if pod.spec else None
        if node:
            held[node] = held.get(node, 0) + pod_gpus(pod)
        else:
            unscheduled += pod_gpus(pod)
    rows = [["NODE", "ALLOCATABLE", "HELD BY RELEASE"]]
    for node in sorted(nodes.items, key=_name):
        allocatable = _gpu_count((node.status.allocatable or {}).get(GPU) if node.status else None)
        if allocatable > 0:
            rows.append([node.metadata.name, str(allocatable), str(held.get(node.metadata.name, 0))])
    if len(rows) == 1:
        return [f"GPU nodes: none (no node has allocatable {GPU}: is the NVIDIA device plugin running?)"]
    rows.append(["total", str(sum(int(r[1]) for r in rows[1:])), str(sum(int(r[2]) for r in rows[1:]))])
    lines = ["GPU nodes:", *_table(rows)]
    if unscheduled:
        lines.append(f"  {unscheduled} more GPU(s) requested by pods not scheduled yet")
    return lines


def pod_gpus(pod: client.V1Pod) -> int:
    """GPUs a pod holds: the sum of its containers' ``nvidia.com/gpu`` limits (requests when no limit)."""
    total = 0
    for container in (pod.spec.containers if pod.spec else None) or []:
        resources = container.resources or client.V1ResourceRequirements()
        total += _gpu_count((resources.limits or {}).get(GPU, (resources.requests or {}).get(GPU)))
    return total


def _gpu_count(quantity: str | None) -> int:
    return int(parse_quantity(quantity)) if quantity else 0


def _queue_line(
    depths: dict[str, int] | None,
    namespace: str,
    pods: list[client.V1Pod],
    by_component: dict[str, client.V1Deployment],
) -> str:
    if depths is not None:
        return "queues: " + ", ".join(f"{queue} {depth}" for queue, depth in depths.items())
    redis = _redis_service(pods, by_component)
    forward = f"kubectl -n {namespace} port-forward svc/{redis} 6379" if redis else "port-forward to the broker"
    return (
        "queues: depths unavailable (the broker is not reachable from here; "
        f"{forward} and pass --broker redis://:PASSWORD@localhost:6379/0)"
    )


def _redis_service(pods: list[client.V1Pod], by_component: dict[str, client.V1Deployment]) -> str | None:
    """``<fullname>-redis`` when the release runs its own Redis and a deployment shows the fullname."""
    if not any(_component(p) == "redis" for p in pods):
        return None
    for component, deployment in by_component.items():
        if deployment.metadata.name.endswith(f"-{component}"):
            return deployment.metadata.name.removesuffix(f"-{component}") + "-redis"
    return None


# --- scale ---------------------------------------------------------------------------------------


def scale_gpu_workers(apps: client.AppsV1Api, namespace: str, release: str, replicas: int) -> str:
    """Set the replicas of the release's GPU-worker Deployment; refused when KEDA scales it."""
    if replicas < 0:
        raise ConfigError(f"replicas must be 0 or more, not {replicas}")
    selector = release_selector(release, "gpu-worker")
    found = call(
        apps,
        f"list deployments in namespace {namespace}",
        apps.list_namespaced_deployment,
        namespace,
        label_selector=selector,
    ).items
    if not found:
        raise ConfigError(
            f"no gpu-worker deployment for release {release} in namespace {namespace} "
            f"(selector {selector}): is the chart installed? (helm list -n {namespace})"
        )
    if len(found) > 1:
        names = ", ".join(sorted(d.metadata.name for d in found))
        raise ConfigError(f"{len(found)} gpu-worker deployments match {selector} in namespace {namespace}: {names}")
    deployment = found[0]
    name = deployment.metadata.name
    if _keda_managed(deployment):
        raise ConfigError(
            f"deployment {name} in namespace {namespace} is scaled by a KEDA ScaledObject: KEDA owns the replica "
            "count; change keda.maxReplicas (or keda.minReplicas) in the values and run helm upgrade instead"
        )
    before = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    scale = call(
        apps,
        f"scale deployment {name} in namespace {namespace}",
        apps.patch_namespaced_deployment_scale,
        name,
        namespace,
        {"spec": {"replicas": replicas}},
    )
    return f"gpu workers: {before} -> {scale.spec.replicas} (deployment {name} in namespace {namespace})"


def _keda_managed(deployment: client.V1Deployment) -> bool:
    return (deployment.metadata.annotations or {}).get(KEDA_ANNOTATION) == "true"


# --- helpers -------------------------------------------------------------------------------------


def human_duration(delta: timedelta) -> str:
    """A duration as kubectl's AGE column writes it (k8s.io/apimachinery HumanDuration): 45s, 5m30s,
    2h15m, 3d4h, 120d."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return _pair(minutes, "m", seconds % 60, "s")
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return _pair(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return _pair(hours // 24, "d", hours % 24, "h")
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        return _pair(hours // 24 // 365, "y", hours // 24 % 365, "d")
    return f"{hours // 24 // 365}y"


def _pair(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big}{big_unit}{small}{small_unit}" if small else f"{big}{big_unit}"


def _table(rows: Iterable[list[str]], indent: str = "  ") -> list[str]:
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _component(obj: client.V1Pod | client.V1Deployment) -> str | None:
    return (obj.metadata.labels or {}).get(COMPONENT_LABEL)


def _name(obj: client.V1Pod | client.V1Deployment | client.V1Node) -> str:
    return obj.metadata.name
