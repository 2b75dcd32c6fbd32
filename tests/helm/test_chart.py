"""The Helm chart, rendered by the real Helm 4 binary and checked against the Kubernetes schemas.

No Kubernetes API server runs here: correctness comes from `helm lint --strict`, `helm template`
piped to `kubernetes-validate --strict` (the official OpenAPI schemas), and assertions on the
rendered objects.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "cxrstudy"

SCENARIOS = {
    "default": {},
    "gpu-nodes-with-taints": {
        "gpuWorker": {
            "replicas": 2,
            "gpus": 2,
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }
    },
    "keda": {"keda": {"enabled": True, "maxReplicas": 8}},
    "keda-queue-only": {"keda": {"enabled": True, "countRunning": False}},
    "external-redis": {
        "redis": {"enabled": False},
        "externalRedis": {
            "host": "redis.shared.svc",
            "port": 6380,
            "db": 3,
            "tls": True,
            "existingSecret": "ext-redis",
        },
        "keda": {"enabled": True},
    },
    "existing-s3-secret": {
        "store": {"uri": "s3://lab-bucket/cxr", "endpoint": "http://minio.storage:9000", "existingSecret": "s3-creds"}
    },
    "workload-identity": {
        "store": {"uri": "s3://lab-bucket/cxr"},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/cxrstudy"}},
        "flower": {"enabled": True},
    },
}


@pytest.fixture(scope="session")
def helm() -> str:
    binary = str(Path(sys.executable).parent / "helm")
    if not Path(binary).exists():
        binary = shutil.which("helm") or ""
    if not binary:
        pytest.fail(
            "the chart tests need helm 4: run `bash scripts/bootstrap.sh --test` (it extracts it into .venv/bin)"
        )
    out = subprocess.run([binary, "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("v4."), out
    return binary


def values_file(tmp_path, values: dict) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(helm, tmp_path, values: dict, release: str = "lab") -> tuple[str, list[dict]]:
    proc = subprocess.run(
        [helm, "template", release, str(CHART), "--namespace", "ml", "-f", str(values_file(tmp_path, values))],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, [d for d in yaml.safe_load_all(proc.stdout) if d]


def objects(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs) -> dict[str, dict]:
    """Pod templates by component label."""
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            tpl = d["spec"]["template"]
            out[tpl["metadata"]["labels"]["app.kubernetes.io/component"]] = tpl
    return out


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_and_validate_against_the_kubernetes_schemas(helm, tmp_path, scenario):
    lint = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "-f", str(values_file(tmp_path, SCENARIOS[scenario]))],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    manifest, docs = render(helm, tmp_path, SCENARIOS[scenario])
    validate = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-"],
        input=manifest,
        capture_output=True,
        text=True,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    for line in validate.stdout.splitlines():
        # Only KEDA's custom resources have no schema in kubernetes-validate; everything else passed.
        assert line.startswith("INFO") or "keda.sh/v1alpha1" in line, line
    assert validate.stdout.count("passed for resource") == sum(
        1 for d in docs if not d["apiVersion"].startswith("keda")
    )


def test_gpu_limit_shm_grace_and_eviction_on_gpu_workers_only(helm, tmp_path):
    _, docs = render(helm, tmp_path, SCENARIOS["gpu-nodes-with-taints"] | {"worker": {"sigtermGrace": 300}})
    pods = pod_specs(docs)
    assert set(pods) == {"gpu-worker", "cpu-worker", "redis", "toolbox"}
    gpu = pods["gpu-worker"]["spec"]
    (container,) = gpu["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["args"][:3] == ["worker", "--queues", "gpu"]
    assert gpu["terminationGracePeriodSeconds"] == 330
    assert {"name": "CXRSTUDY_SIGTERM_GRACE", "value": "300"} in container["env"]
    shm = next(v for v in gpu["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pods["gpu-worker"]["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert gpu["tolerations"] == SCENARIOS["gpu-nodes-with-taints"]["gpuWorker"]["tolerations"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert objects(docs, "Deployment")["lab-cxrstudy-gpu-worker"]["spec"]["replicas"] == 2
    for component, tpl in pods.items():
        if component != "gpu-worker":
            for c in tpl["spec"]["containers"]:
                assert "nvidia.com/gpu" not in str(c.get("resources")), component
    cpu = pods["cpu-worker"]["spec"]
    assert cpu["containers"][0]["args"][:3] == ["worker", "--queues", "cpu"] and "tolerations" not in cpu


def test_hardened_security_context_everywhere(helm, tmp_path):
    _, docs = render(helm, tmp_path, SCENARIOS["workload-identity"])
    pods = pod_specs(docs)
    assert set(pods) == {"gpu-worker", "cpu-worker", "redis", "toolbox", "flower"}
    for component, tpl in pods.items():
        spec = tpl["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, component
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, component
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, component
            assert sc["readOnlyRootFilesystem"] is True, component
            assert sc["capabilities"] == {"drop": ["ALL"]}, component
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts or "/data" in mounts, component  # somewhere writable
        if component != "toolbox":
            assert spec["automountServiceAccountToken"] is False, component
    worker_env = {e["name"]: e for e in pods["gpu-worker"]["spec"]["containers"][0]["env"]}
    assert worker_env["XDG_CACHE_HOME"]["value"] == "/cache" and worker_env["HOME"]["value"] == "/tmp/home"
    # What provenance.json records of where a run ran: the image and the pod.
    assert worker_env["CXRSTUDY_IMAGE"]["value"] == pods["gpu-worker"]["spec"]["containers"][0]["image"]
    assert worker_env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "MLFLOW_TRACKING_URI" not in worker_env  # tracking is off unless a URI is given


def test_mlflow_tracking_reaches_every_worker_as_the_clients_variables(helm, tmp_path):
    values = {"tracking": {"mlflowUri": "http://mlflow.mlops.svc:5000", "experiment": "cxr"}}
    _, docs = render(helm, tmp_path, values)
    for component in ("gpu-worker", "cpu-worker"):
        env = {e["name"]: e.get("value") for e in pod_specs(docs)[component]["spec"]["containers"][0]["env"]}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlops.svc:5000", component
        assert env["MLFLOW_EXPERIMENT_NAME"] == "cxr", component


def _all_env(docs):
    for tpl in pod_specs(docs).values():
        for c in tpl["spec"]["containers"]:
            yield from c.get("env", [])


@pytest.mark.parametrize("scenario", ["default", "existing-s3-secret", "external-redis", "workload-identity"])
def test_credentials_only_by_secret_reference(helm, tmp_path, scenario):
    manifest, docs = render(helm, tmp_path, SCENARIOS[scenario])
    for env in _all_env(docs):
        if any(word in env["name"] for word in ("PASSWORD", "SECRET", "ACCESS_KEY", "AUTH")):
            assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
        if env["name"] == "CXRSTUDY_BROKER_URL":
            assert "$(REDIS_PASSWORD)" in env["value"] or "@" not in env["value"], env
    for cm in objects(docs, "ConfigMap").values():
        assert "password" not in str(cm).lower()
    env = {e["name"]: e for e in next(iter(pod_specs(docs).values()))["spec"]["containers"][0]["env"]}
    if scenario == "existing-s3-secret":
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
        assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://minio.storage:9000"
    else:
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    if scenario == "external-redis":
        assert env["CXRSTUDY_BROKER_URL"]["value"] == "rediss://:$(REDIS_PASSWORD)@redis.shared.svc:6380/3"
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "ext-redis", "key": "redis-password"}
        assert not objects(docs, "StatefulSet") and not objects(docs, "Secret")
    if scenario == "workload-identity":
        sa = objects(docs, "ServiceAccount")
        assert sa["lab-cxrstudy"]["metadata"]["annotations"] == SCENARIOS[scenario]["serviceAccount"]["annotations"]
        assert (
            sa["lab-cxrstudy-toolbox"]["metadata"]["annotations"]
            == SCENARIOS[scenario]["serviceAccount"]["annotations"]
        )


def test_the_generated_redis_password_lives_only_in_its_secret(helm, tmp_path):
    manifest, docs = render(helm, tmp_path, {})
    (secret,) = objects(docs, "Secret").values()
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    encoded = secret["data"]["redis-password"]
    assert manifest.count(encoded) == 1
    import base64

    assert base64.b64decode(encoded).decode() not in manifest.replace(encoded, "")


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_network_policy_admits_the_chart_pods_and_keda_only(helm, tmp_path):
    _, docs = render(helm, tmp_path, SCENARIOS["keda"] | {"flower": {"enabled": True}})
    (policy,) = objects(docs, "NetworkPolicy").values()
    pods = pod_specs(docs)
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], pods["redis"]["metadata"]["labels"])
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    release_peer, keda_peer = rule["from"]
    for component in ("gpu-worker", "cpu-worker", "toolbox", "flower"):
        assert _matches(release_peer["podSelector"]["matchLabels"], pods[component]["metadata"]["labels"]), component
    other_release = {"app.kubernetes.io/name": "cxrstudy", "app.kubernetes.io/instance": "other"}
    assert not _matches(release_peer["podSelector"]["matchLabels"], other_release)
    assert keda_peer == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
        "podSelector": {"matchLabels": {"app": "keda-operator"}},
    }
    _, docs = render(helm, tmp_path, {})
    (policy,) = objects(docs, "NetworkPolicy").values()
    assert len(policy["spec"]["ingress"][0]["from"]) == 1  # no KEDA peer without KEDA


def test_keda_scales_the_gpu_workers_on_their_own_queue(helm, tmp_path):
    _, docs = render(helm, tmp_path, SCENARIOS["keda"])
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    gpu = objects(docs, "Deployment")["lab-cxrstudy-gpu-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == gpu["metadata"]["name"]
    assert "replicas" not in gpu["spec"]  # KEDA owns the count; helm upgrades must not reset it
    assert gpu["metadata"]["annotations"]["cxrstudy.io/keda"] == "true"
    queue = gpu["spec"]["template"]["spec"]["containers"][0]["args"][2]
    trigger, running = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == queue == "gpu"
    assert trigger["metadata"]["address"] == "lab-cxrstudy-redis:6379"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 8)
    (auth,) = [d for d in docs if d["kind"] == "TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == running["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "lab-cxrstudy-redis", "key": "redis-password"}
    ]


def keda_spec(helm, tmp_path, values: dict) -> dict:
    (scaled,) = [d for d in render(helm, tmp_path, values)[1] if d["kind"] == "ScaledObject"]
    return scaled["spec"]


@pytest.mark.parametrize("scenario", ["keda", "external-redis"])
def test_keda_scales_on_queued_plus_running_jobs(helm, tmp_path, scenario):
    from worker.coord import RUNNING

    spec = keda_spec(helm, tmp_path, SCENARIOS[scenario] | {"keda": {"enabled": True, "listLength": 2}})
    queued, running = spec["triggers"]
    assert (queued["name"], running["name"]) == ("queued", "running")
    assert (queued["type"], running["type"]) == ("redis", "redis")
    assert (queued["metadata"]["listName"], running["metadata"]["listName"]) == ("gpu", "cxrstudy.running")
    assert running["metadata"]["listName"] == RUNNING  # the list the workers keep
    assert queued["metadata"]["listLength"] == running["metadata"]["listLength"] == "2"
    # the same Redis, database, TLS and password for both
    same = {k: v for k, v in running.items() if k not in ("name", "metadata")}
    assert same == {k: v for k, v in queued.items() if k not in ("name", "metadata")}
    assert {k: v for k, v in running["metadata"].items() if k != "listName"} == {
        k: v for k, v in queued["metadata"].items() if k != "listName"
    }
    if scenario == "external-redis":
        assert running["metadata"] == {
            "address": "redis.shared.svc:6380",
            "databaseIndex": "3",
            "enableTLS": "true",
            "listName": "cxrstudy.running",
            "listLength": "2",
        }
        assert running["authenticationRef"] == {"name": "lab-cxrstudy-redis"}
    # the sum of the two, not the larger (what the HPA makes of two metrics)
    assert spec["advanced"]["scalingModifiers"] == {
        "formula": "queued + running",
        "target": "2",
        "activationTarget": "0",
        "metricType": "AverageValue",
    }
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 60}
    ]


def test_keda_on_the_queue_alone_with_count_running_off(helm, tmp_path):
    spec = keda_spec(helm, tmp_path, {"keda": {"enabled": True, "countRunning": False}})
    (trigger,) = spec["triggers"]
    assert (trigger["name"], trigger["metadata"]["listName"], trigger["metadata"]["listLength"]) == (
        "queued",
        "gpu",
        "1",
    )
    assert "scalingModifiers" not in spec["advanced"] and "horizontalPodAutoscalerConfig" in spec["advanced"]


def test_redis_is_durable_and_never_evicts(helm, tmp_path):
    _, docs = render(helm, tmp_path, {})
    redis = objects(docs, "StatefulSet")["lab-cxrstudy-redis"]
    (c,) = redis["spec"]["template"]["spec"]["containers"]
    command = " ".join(c["args"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert '--requirepass "$REDIS_PASSWORD"' in command
    assert c["image"].startswith("redis:")
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    pdb = objects(docs, "PodDisruptionBudget")["lab-cxrstudy-redis"]
    assert pdb["spec"]["maxUnavailable"] == 0
    assert _matches(pdb["spec"]["selector"]["matchLabels"], redis["spec"]["template"]["metadata"]["labels"])


def test_rbac_covers_the_cluster_commands_and_no_more(helm, tmp_path):
    _, docs = render(helm, tmp_path, {})
    role = objects(docs, "Role")["lab-cxrstudy-toolbox"]
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r for r in role["rules"]}
    assert rules[(("",), ("pods",))]["verbs"] == ["get", "list", "watch"]
    scale = rules[(("apps",), ("deployments/scale",))]
    assert scale["resourceNames"] == ["lab-cxrstudy-gpu-worker"] and "delete" not in scale["verbs"]
    (cluster_role,) = objects(docs, "ClusterRole").values()
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]
    toolbox = pod_specs(docs)["toolbox"]["spec"]
    assert toolbox["serviceAccountName"] == "lab-cxrstudy-toolbox"
    binding = objects(docs, "RoleBinding")["lab-cxrstudy-toolbox"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lab-cxrstudy-toolbox", "namespace": "ml"}]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gpuWorkr": {"replicas": 1}}, "additional properties 'gpuWorkr' not allowed"),
        ({"gpuWorker": {"replicas": -1}}, "at '/gpuWorker/replicas': minimum: got -1, want 0"),
        ({"gpuWorker": {"gpus": 0}}, "at '/gpuWorker/gpus': minimum: got 0, want 1"),
        ({"store": {"uri": "/data/store"}}, "at '/store/uri'"),
        ({"redis": {"enabled": False}}, "at '/externalRedis/host'"),
        ({"worker": {"sigtermGrace": "long"}}, "at '/worker/sigtermGrace'"),
        ({"keda": {"countRunning": "yes"}}, "at '/keda/countRunning': got string, want boolean"),
        ({"tracking": {"mlflowUri": "mlflow:5000"}}, "at '/tracking/mlflowUri'"),
        ({"tracking": {"mlfowUri": "http://m:5000"}}, "additional properties 'mlfowUri' not allowed"),
    ],
)
def test_bad_values_fail_with_the_schema_message(helm, tmp_path, values, message):
    proc = subprocess.run(
        [helm, "template", "lab", str(CHART), "-f", str(values_file(tmp_path, values))], capture_output=True, text=True
    )
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def undocumented(text: str) -> list[str]:
    """Keys of a values file with no comment: neither right above them nor above an enclosing key."""
    lines = text.splitlines()
    missing, stack = [], []  # stack: (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        while (
            j >= 0
            and lines[j].strip()
            and not lines[j].strip().startswith("#")
            and len(lines[j]) - len(lines[j].lstrip()) == indent
            and not lines[j].rstrip().endswith(":")
        ):
            j -= 1  # siblings in a run share the comment above the run
        commented = j >= 0 and lines[j].strip().startswith("#")
        documented = commented or any(d for _, d in stack)
        if not documented:
            missing.append(m.group(2))
        stack.append((indent, documented))
    return missing


def test_every_value_is_commented_and_the_notes_name_the_next_commands(helm):
    assert undocumented((CHART / "values.yaml").read_text()) == []
    assert undocumented("# -- a\na: 1\nb: 2\n\nc:\n  d: 1\n") == ["c", "d"]
    proc = subprocess.run(
        [helm, "install", "lab", str(CHART), "--dry-run=client", "--namespace", "ml"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "cxrstudy submit" in notes and "port-forward svc/lab-cxrstudy-redis" in notes
    assert "exec deploy/lab-cxrstudy-toolbox -- cxrstudy status" in notes


def test_the_plain_manifests_match_the_chart(helm):
    proc = subprocess.run(
        [helm, "template", "cxrstudy", str(CHART), "--namespace", "cxrstudy", "-f", str(ROOT / "k8s" / "values.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (ROOT / "k8s" / "cxrstudy.yaml").read_text(), (
        "k8s/cxrstudy.yaml drifted from the chart: regenerate it with the command in k8s/README.md"
    )
    validate = subprocess.run(
        [
            str(Path(sys.executable).parent / "kubernetes-validate"),
            "--strict",
            "--quiet",
            *map(str, sorted((ROOT / "k8s" / "examples").glob("*.yaml"))),
        ],
        capture_output=True,
        text=True,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
