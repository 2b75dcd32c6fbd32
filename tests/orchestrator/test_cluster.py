"""``cluster status`` and ``cluster scale`` through the real ``kubernetes`` client, against recorded API responses.

No API server runs here. The client is real end to end (the API classes, ApiClient's serialization and
deserialization into V1Pod / V1Deployment / V1Node / V1Scale, RESTClientObject's status-to-exception
mapping and body encoding); only urllib3's pool manager under it is replaced by
:class:`RecordedApiServer`, which answers each (method, path) with a response body recorded in
``k8s_recorded/`` and records what was sent (method, path, query, JSON body, headers).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import urllib3
from kubernetes import client

from jobs.errors import ConfigError, CxrStudyError
from orchestrator import cluster
from orchestrator.cluster import cluster_status, human_duration, scale_gpu_workers
from orchestrator.kube import load_clients

RECORDED = Path(__file__).parent / "k8s_recorded"
HOST = "https://k8s.test"
NS, RELEASE = "cxr-train", "cxr"
SELECTOR = "app.kubernetes.io/name=cxrstudy,app.kubernetes.io/instance=cxr"
GPU_SELECTOR = SELECTOR + ",app.kubernetes.io/component=gpu-worker"
NOW = datetime(2025, 6, 3, 12, 0, 0, tzinfo=UTC)

PODS = f"/api/v1/namespaces/{NS}/pods"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
NODES = "/api/v1/nodes"
SCALE = f"/apis/apps/v1/namespaces/{NS}/deployments/cxr-cxrstudy-gpu-worker/scale"

STATUS_ROUTES = {
    ("GET", PODS): (200, "pods.json"),
    ("GET", DEPLOYMENTS): (200, "deployments.json"),
    ("GET", NODES): (200, "nodes.json"),
}


# --- the recorded API server -----------------------------------------------------------------------


@dataclass
class Sent:
    method: str
    path: str
    query: dict[str, str]
    body: object
    headers: dict[str, str]
    timeout: object


class RecordedResponse:
    """What urllib3's pool manager returns and kubernetes.client.rest.RESTResponse wraps: status, reason,
    data (bytes), getheaders(), getheader()."""

    def __init__(self, status: int, data: bytes):
        self.status = status
        self.reason = HTTPStatus(status).phrase
        self.data = data
        self.headers = urllib3.HTTPHeaderDict(
            {
                "Audit-Id": "8f14e45f-ceea-467f-9c8e-2a1d3b5c7e90",
                "Cache-Control": "no-cache, private",
                "Content-Type": "application/json",
                "X-Kubernetes-Pf-Flowschema-Uid": "b1f0b7a4-0c55-4a57-9a0a-7a4f8d4c1b11",
                "Date": "Tue, 03 Jun 2025 12:00:00 GMT",
            }
        )

    def getheaders(self):
        return self.headers

    def getheader(self, name, default=None):
        return self.headers.get(name, default)


class RecordedApiServer:
    """Stands in for urllib3's PoolManager under the client's real RESTClientObject.

    ``routes`` maps (method, path) to (HTTP status, recorded file name or body bytes) or to an exception to raise
    (a connection failure). Unknown routes answer 404 with a Status body, as the API server does.
    """

    def __init__(self, routes: dict):
        self.routes = routes
        self.sent: list[Sent] = []

    def request(self, method, url, fields=None, body=None, headers=None, timeout=None, **_):
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == HOST, url
        query = dict(parse_qsl(parts.query)) | dict(fields or [])
        sent = Sent(method, parts.path, query, json.loads(body) if body else None, dict(headers or {}), timeout)
        self.sent.append(sent)
        route = self.routes.get((method, parts.path))
        if isinstance(route, Exception):
            raise route
        if route is None:
            missing = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
            missing |= {
                "message": "the server could not find the requested resource",
                "reason": "NotFound",
                "code": 404,
            }
            return RecordedResponse(404, json.dumps(missing).encode())
        status, body = route
        return RecordedResponse(status, body if isinstance(body, bytes) else (RECORDED / body).read_bytes())

    def paths(self) -> list[tuple[str, str]]:
        return [(s.method, s.path) for s in self.sent]


def recorded_cluster(routes: dict) -> tuple[client.CoreV1Api, client.AppsV1Api, RecordedApiServer]:
    api = client.ApiClient(client.Configuration(host=HOST))
    server = RecordedApiServer(routes)
    api.rest_client.pool_manager = server
    return client.CoreV1Api(api), client.AppsV1Api(api), server


def status(routes: dict = STATUS_ROUTES, queue_depths: dict[str, int] | None = None) -> tuple[str, RecordedApiServer]:
    core, apps, server = recorded_cluster(routes)
    return cluster_status(core, apps, NS, RELEASE, queue_depths, now=NOW), server


def section(text: str, title: str) -> list[str]:
    """The lines under ``title`` up to the next blank line."""
    lines = text.splitlines()
    start = lines.index(title) + 1
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[start:end]


def cells(line: str) -> list[str]:
    """A table row's cells (columns are separated by two spaces or more)."""
    return re.split(r"\s{2,}", line.strip())


# --- cluster status --------------------------------------------------------------------------------

EXPECTED_STATUS = """\
release cxr in namespace cxr-train

deployments:
  gpu-worker  cxr-cxrstudy-gpu-worker  3 desired, 1 ready
  cpu-worker  cxr-cxrstudy-cpu-worker  1 desired, 1 ready

gpu workers (queue gpu):
  NAME                                     PHASE    READY      REASON            NODE        RESTARTS  AGE
  cxr-cxrstudy-gpu-worker-6f7d9c8b4-2xk9p  Running  ready      -                 gpu-a100-1  0         2d4h
  cxr-cxrstudy-gpu-worker-6f7d9c8b4-7mzq4  Running  not ready  CrashLoopBackOff  gpu-a100-1  5         150m
      worker: last exit OOMKilled (exit code 137)
  cxr-cxrstudy-gpu-worker-6f7d9c8b4-r8wtn  Pending  not ready  Unschedulable     -           0         5m
      0/4 nodes are available: 1 Insufficient nvidia.com/gpu, 3 node(s) didn't match Pod's node affinity/selector. \
preemption: 0/4 nodes are available: 1 No preemption victims found for incoming pod, 3 Preemption is not helpful for \
scheduling.

cpu workers (queue cpu):
  NAME                                     PHASE    READY  REASON  NODE        RESTARTS  AGE
  cxr-cxrstudy-cpu-worker-5b6c7d8e9-hq4lm  Running  ready  -       cpu-pool-1  1         14d

other pods:
  NAME                                  PHASE    READY  REASON  NODE        RESTARTS  AGE
  cxr-cxrstudy-redis-0                  Running  ready  -       cpu-pool-1  0         14d
  cxr-cxrstudy-toolbox-58c9f7d6b-wx7vn  Running  ready  -       cpu-pool-2  0         90s

GPU nodes:
  NODE        ALLOCATABLE  HELD BY RELEASE
  gpu-a100-1  4            2
  gpu-t4-1    1            0
  total       5            2
  1 more GPU(s) requested by pods not scheduled yet

queues: gpu 3, cpu 0"""


def test_status_of_a_running_release_is_exact():
    text, _ = status(queue_depths={"gpu": 3, "cpu": 0})
    assert text == EXPECTED_STATUS


def test_status_sends_the_release_selector_and_reads_pods_deployments_nodes():
    _, server = status()
    assert server.paths() == [("GET", PODS), ("GET", DEPLOYMENTS), ("GET", NODES)]
    assert server.sent[0].query == {"labelSelector": SELECTOR}
    assert server.sent[1].query == {"labelSelector": SELECTOR}
    assert server.sent[2].query == {}
    assert all(s.headers["Accept"] == "application/json" for s in server.sent)
    # Every call is bounded: 5 s to connect, 30 s to read.
    assert all(s.timeout.connect_timeout == 5 and s.timeout.read_timeout == 30 for s in server.sent)


def test_pod_rows_show_phase_readiness_reason_node_restarts_age():
    text, _ = status()
    rows = {cells(line)[0]: cells(line)[1:] for line in section(text, "gpu workers (queue gpu):")[1:]}
    assert rows["cxr-cxrstudy-gpu-worker-6f7d9c8b4-2xk9p"] == ["Running", "ready", "-", "gpu-a100-1", "0", "2d4h"]
    assert rows["cxr-cxrstudy-gpu-worker-6f7d9c8b4-7mzq4"] == [
        "Running",
        "not ready",
        "CrashLoopBackOff",
        "gpu-a100-1",
        "5",
        "150m",
    ]
    assert rows["cxr-cxrstudy-gpu-worker-6f7d9c8b4-r8wtn"] == ["Pending", "not ready", "Unschedulable", "-", "0", "5m"]
    assert rows["worker: last exit OOMKilled (exit code 137)"] == []
    assert any(name.startswith("0/4 nodes are available: 1 Insufficient nvidia.com/gpu") for name in rows)
    cpu = [cells(line) for line in section(text, "cpu workers (queue cpu):")[1:]]
    assert cpu == [["cxr-cxrstudy-cpu-worker-5b6c7d8e9-hq4lm", "Running", "ready", "-", "cpu-pool-1", "1", "14d"]]
    others = [cells(line)[0] for line in section(text, "other pods:")[1:]]
    assert others == ["cxr-cxrstudy-redis-0", "cxr-cxrstudy-toolbox-58c9f7d6b-wx7vn"]


def test_gpu_nodes_count_allocatable_and_the_release_s_gpus():
    text, _ = status()
    rows = [cells(line) for line in section(text, "GPU nodes:")]
    # cpu-pool-* have no nvidia.com/gpu; gpu-t4-2 has capacity 1 but allocatable 0 (unhealthy): all left out.
    assert rows == [
        ["NODE", "ALLOCATABLE", "HELD BY RELEASE"],
        ["gpu-a100-1", "4", "2"],
        ["gpu-t4-1", "1", "0"],
        ["total", "5", "2"],
        ["1 more GPU(s) requested by pods not scheduled yet"],
    ]


def test_deployments_show_desired_and_ready_replicas():
    text, _ = status()
    assert [cells(line) for line in section(text, "deployments:")] == [
        ["gpu-worker", "cxr-cxrstudy-gpu-worker", "3 desired, 1 ready"],
        ["cpu-worker", "cxr-cxrstudy-cpu-worker", "1 desired, 1 ready"],
    ]


def test_queue_depths_line_or_how_to_get_them():
    text, _ = status(queue_depths={"gpu": 3, "cpu": 0})
    assert text.splitlines()[-1] == "queues: gpu 3, cpu 0"
    text, _ = status()
    assert text.splitlines()[-1] == (
        "queues: depths unavailable (the broker is not reachable from here; "
        "kubectl -n cxr-train port-forward svc/cxr-cxrstudy-redis 6379 "
        "and pass --broker redis://:PASSWORD@localhost:6379/0)"
    )


def test_no_pods_and_no_deployments_says_the_chart_is_not_installed():
    routes = {("GET", PODS): (200, "pods_empty.json"), ("GET", DEPLOYMENTS): (200, "deployments_empty.json")}
    text, server = status(routes)
    assert text == (
        "no cxrstudy pods for release cxr in namespace cxr-train: is the chart installed? (helm list -n cxr-train)"
    )
    assert server.paths() == [("GET", PODS), ("GET", DEPLOYMENTS)]  # no node listing for nothing


def test_workers_scaled_to_zero_by_keda():
    routes = STATUS_ROUTES | {
        ("GET", PODS): (200, "pods_scaled_to_zero.json"),
        ("GET", DEPLOYMENTS): (200, "deployments_scaled_to_zero.json"),
    }
    text, _ = status(routes)
    assert [cells(line) for line in section(text, "deployments:")] == [
        ["gpu-worker", "cxr-cxrstudy-gpu-worker", "0 desired, 0 ready (KEDA-managed)"],
        ["cpu-worker", "cxr-cxrstudy-cpu-worker", "0 desired, 0 ready"],
    ]
    assert section(text, "gpu workers (queue gpu):") == ["  no pods (the deployment is scaled to 0)"]
    assert section(text, "cpu workers (queue cpu):") == ["  no pods (the deployment is scaled to 0)"]
    assert [cells(line) for line in section(text, "GPU nodes:")][1:] == [
        ["gpu-a100-1", "4", "0"],
        ["gpu-t4-1", "1", "0"],
        ["total", "5", "0"],
    ]


def test_a_cluster_without_gpu_nodes():
    text, _ = status(STATUS_ROUTES | {("GET", NODES): (200, "nodes_cpu_only.json")})
    assert "GPU nodes: none (no node has allocatable nvidia.com/gpu: is the NVIDIA device plugin running?)" in (
        text.splitlines()
    )


def test_forbidden_nodes_cost_only_the_gpu_section():
    text, _ = status(STATUS_ROUTES | {("GET", NODES): (403, "forbidden_nodes.json")})
    assert "GPU nodes: unavailable (forbidden to list nodes; the chart's ClusterRole grants it: rbac.create)" in (
        text.splitlines()
    )
    assert "cxr-cxrstudy-gpu-worker-6f7d9c8b4-2xk9p" in text


def test_forbidden_pods_become_a_one_line_config_error_naming_rbac():
    core, apps, server = recorded_cluster(STATUS_ROUTES | {("GET", PODS): (403, "forbidden_pods.json")})
    with pytest.raises(ConfigError) as raised:
        cluster_status(core, apps, NS, RELEASE, now=NOW)
    message = str(raised.value)
    assert isinstance(raised.value, CxrStudyError)
    assert "\n" not in message
    assert message == (
        "forbidden (403) to list pods in namespace cxr-train: pods is forbidden: User "
        '"system:serviceaccount:cxr-train:cxr-cxrstudy-toolbox" cannot list resource "pods" in API group "" in the '
        'namespace "cxr-train"; the account needs get/list on pods, nodes, deployments and patch on '
        "deployments/scale; see the chart's RBAC (rbac.create)"
    )
    assert server.paths() == [("GET", PODS)]


def test_expired_credentials_become_a_config_error():
    core, apps, _ = recorded_cluster({("GET", PODS): (401, "unauthorized.json")})
    with pytest.raises(ConfigError, match=r"^unauthorized \(401\) to list pods in namespace cxr-train: Unauthorized: "):
        cluster_status(core, apps, NS, RELEASE, now=NOW)


def test_an_unreachable_api_server_becomes_a_config_error():
    refused = urllib3.exceptions.NewConnectionError(
        object(), "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    down = urllib3.exceptions.MaxRetryError(None, PODS, reason=refused)
    core, apps, _ = recorded_cluster({("GET", PODS): down})
    with pytest.raises(ConfigError) as raised:
        cluster_status(core, apps, NS, RELEASE, now=NOW)
    assert str(raised.value) == (
        "cannot reach the Kubernetes API server at https://k8s.test to list pods in namespace cxr-train "
        "(Failed to establish a new connection: [Errno 111] Connection refused): check the kubeconfig context "
        "(kubectl config current-context), the VPN, or the server address"
    )


# --- cluster scale ---------------------------------------------------------------------------------

SCALE_ROUTES = {
    ("GET", DEPLOYMENTS): (200, "deployments_gpu_worker.json"),
    ("PATCH", SCALE): (200, "scale_gpu_worker_3.json"),
}


def test_scale_patches_the_gpu_worker_deployment_scale():
    _, apps, server = recorded_cluster(SCALE_ROUTES)
    line = scale_gpu_workers(apps, NS, RELEASE, 3)
    assert line == "gpu workers: 1 -> 3 (deployment cxr-cxrstudy-gpu-worker in namespace cxr-train)"
    assert server.paths() == [("GET", DEPLOYMENTS), ("PATCH", SCALE)]
    assert server.sent[0].query == {"labelSelector": GPU_SELECTOR}
    patch = server.sent[1]
    assert patch.body == {"spec": {"replicas": 3}}
    assert patch.query == {}
    # The client picks json-patch+json for PATCH, then rewrites it for a dict body: the server gets a
    # strategic merge patch, which it accepts on /scale.
    assert patch.headers["Content-Type"] == "application/strategic-merge-patch+json"


def test_scale_refuses_a_keda_managed_deployment():
    _, apps, server = recorded_cluster(SCALE_ROUTES | {("GET", DEPLOYMENTS): (200, "deployments_gpu_worker_keda.json")})
    with pytest.raises(ConfigError) as raised:
        scale_gpu_workers(apps, NS, RELEASE, 3)
    assert str(raised.value) == (
        "deployment cxr-cxrstudy-gpu-worker in namespace cxr-train is scaled by a KEDA ScaledObject: KEDA owns the "
        "replica count; change keda.maxReplicas (or keda.minReplicas) in the values and run helm upgrade instead"
    )
    assert server.paths() == [("GET", DEPLOYMENTS)]  # nothing patched


def test_scale_refuses_negative_replicas_before_any_call():
    _, apps, server = recorded_cluster(SCALE_ROUTES)
    with pytest.raises(ConfigError, match=r"^replicas must be 0 or more, not -1$"):
        scale_gpu_workers(apps, NS, RELEASE, -1)
    assert server.sent == []


def test_scale_without_a_gpu_worker_deployment():
    _, apps, _ = recorded_cluster({("GET", DEPLOYMENTS): (200, "deployments_empty.json")})
    with pytest.raises(ConfigError) as raised:
        scale_gpu_workers(apps, NS, RELEASE, 2)
    assert str(raised.value) == (
        f"no gpu-worker deployment for release cxr in namespace cxr-train (selector {GPU_SELECTOR}): "
        "is the chart installed? (helm list -n cxr-train)"
    )


def test_scale_with_several_gpu_worker_deployments():
    listing = json.loads((RECORDED / "deployments_gpu_worker.json").read_text())
    twin = json.loads(json.dumps(listing["items"][0]))
    twin["metadata"]["name"] = "cxr-cxrstudy-gpu-worker-old"
    listing["items"].append(twin)
    _, apps, server = recorded_cluster({("GET", DEPLOYMENTS): (200, json.dumps(listing).encode())})
    with pytest.raises(ConfigError) as raised:
        scale_gpu_workers(apps, NS, RELEASE, 2)
    assert str(raised.value) == (
        f"2 gpu-worker deployments match {GPU_SELECTOR} in namespace cxr-train: "
        "cxr-cxrstudy-gpu-worker, cxr-cxrstudy-gpu-worker-old"
    )
    assert server.paths() == [("GET", DEPLOYMENTS)]


def test_scale_forbidden_by_rbac():
    _, apps, _ = recorded_cluster(SCALE_ROUTES | {("PATCH", SCALE): (403, "forbidden_scale.json")})
    with pytest.raises(ConfigError) as raised:
        scale_gpu_workers(apps, NS, RELEASE, 3)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        "forbidden (403) to scale deployment cxr-cxrstudy-gpu-worker in namespace cxr-train: "
        'deployments.apps "cxr-cxrstudy-gpu-worker" is forbidden: User '
    )
    assert message.endswith("see the chart's RBAC (rbac.create)")


# --- clients ---------------------------------------------------------------------------------------

KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: dev
  cluster: {server: "https://dev.k8s.test:6443", insecure-skip-tls-verify: true}
- name: gpu
  cluster: {server: "https://gpu.k8s.test:6443", insecure-skip-tls-verify: true}
users:
- name: me
  user: {token: "t0ken"}
contexts:
- name: dev
  context: {cluster: dev, user: me, namespace: cxr-train}
- name: gpu
  context: {cluster: gpu, user: me}
"""


@pytest.fixture
def outside_a_pod(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)


def test_load_clients_reads_kubeconfig_at_call_time_with_a_context(tmp_path, monkeypatch, outside_a_pod):
    (tmp_path / "config").write_text(KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
    core, apps = load_clients()
    assert core.api_client.configuration.host == "https://dev.k8s.test:6443"
    assert core.api_client is apps.api_client
    core, _ = load_clients("gpu")
    assert core.api_client.configuration.host == "https://gpu.k8s.test:6443"
    assert core.api_client.configuration.api_key["BearerToken"] == "Bearer t0ken"
    assert client.Configuration.get_default_copy().host != "https://gpu.k8s.test:6443"  # no global change


def test_load_clients_without_a_kubeconfig(tmp_path, monkeypatch, outside_a_pod):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as raised:
        load_clients()
    assert str(raised.value) == (
        f"cannot load the kubeconfig {tmp_path / 'absent'} (Invalid kube-config file. No configuration found.): "
        "set KUBECONFIG or --context, or check that `kubectl get pods` works"
    )


def test_load_clients_with_an_unknown_context(tmp_path, monkeypatch, outside_a_pod):
    (tmp_path / "config").write_text(KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
    with pytest.raises(ConfigError) as raised:
        load_clients("prod")
    assert str(raised.value) == (
        f"no context 'prod' in the kubeconfig {tmp_path / 'config'}: list them with `kubectl config get-contexts`"
    )


def test_load_clients_in_a_pod_uses_the_service_account(tmp_path, monkeypatch):
    from kubernetes.config import incluster_config

    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    core, _ = load_clients()
    configuration = core.api_client.configuration
    assert configuration.host == "https://10.96.0.1:443"
    assert configuration.api_key["BearerToken"] == "bearer sa-token"
    assert configuration.ssl_ca_cert == str(tmp_path / "ca.crt")


def test_load_clients_in_a_pod_without_a_token(tmp_path, monkeypatch):
    from kubernetes.config import incluster_config

    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(ConfigError) as raised:
        load_clients()
    assert str(raised.value) == (
        "cannot use the pod's service account (Service token file does not exist.): is "
        "automountServiceAccountToken off? Outside a pod, unset KUBERNETES_SERVICE_HOST to use a kubeconfig"
    )


# --- helpers and fixtures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds, shown",
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (90, "90s"),
        (119, "119s"),
        (300, "5m"),
        (330, "5m30s"),
        (45 * 60, "45m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (7 * 3600 + 59 * 60, "7h59m"),
        (47 * 3600, "47h"),
        (2 * 86400 + 4 * 3600, "2d4h"),
        (7 * 86400, "7d"),
        (14 * 86400 + 6 * 3600, "14d"),
        (800 * 86400, "2y70d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_ages_read_like_kubectl(seconds, shown):
    assert human_duration(timedelta(seconds=seconds)) == shown


def test_status_defaults_now_to_the_current_time():
    core, apps, _ = recorded_cluster(STATUS_ROUTES)
    text = cluster_status(core, apps, NS, RELEASE)
    age = cells(section(text, "other pods:")[2])[-1]  # the toolbox, created 2025-06-03T11:58:30Z
    assert age == human_duration(datetime.now(UTC) - datetime(2025, 6, 3, 11, 58, 30, tzinfo=UTC))


def test_recorded_responses_are_valid_kubernetes_objects():
    validate = pytest.importorskip("kubernetes_validate")
    for path in sorted(RECORDED.glob("*.json")):
        document = json.loads(path.read_text())
        if document["kind"] != "Status":  # kubernetes-validate has no schema for meta/v1 Status
            validate.validate(document, "1.32", strict=True)


def test_release_selector():
    assert cluster.release_selector("cxr") == SELECTOR
    assert cluster.release_selector("cxr", "gpu-worker") == GPU_SELECTOR
