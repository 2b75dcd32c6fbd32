"""The distributed path end to end: Celery workers over a real Redis, the store in a real S3 server."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from jobs.spec.study import JobSpec
from tests.worker.conftest import ROOT

pytestmark = pytest.mark.slow


def jobs_of(store, sid) -> list[JobSpec]:
    doc = json.loads(store.get_text(f"studies/{sid}/study.json"))
    return [JobSpec.from_json(j) for j in doc["jobs"]]


def epochs_logged(store, job) -> list[int]:
    key = job.keys.metrics
    return [json.loads(x)["epoch"] for x in store.get_text(key).splitlines()] if store.exists(key) else []


def test_two_workers_run_a_study_and_the_report_lands_in_s3(cluster, synthetic):
    cluster.start_worker("a")
    cluster.start_worker("b")
    proc = cluster.cli("submit", ROOT / "examples" / "smoke-study.yaml", "--dataset", synthetic)
    assert proc.returncode == 0, proc.stderr
    sid = proc.stdout.strip().splitlines()[-1]
    assert sid.startswith("smoke-")
    cluster.wait_for(lambda: cluster.report_done(sid), what="the report")
    store = cluster.store()
    report = store.get_text(f"studies/{sid}/report/report.md")
    assert "# Cross-Architecture Comparison" in report and "Runs Without a Result" not in report
    status = cluster.status(sid)
    assert [r["state"] for r in status["runs"]] == ["succeeded"] * 4
    assert all(r["epoch"] == "2/2" for r in status["runs"])
    for job in jobs_of(store, sid):
        assert epochs_logged(store, job) == [1, 2]
        assert [e["event"] for e in lease_events(cluster, job.job_id)] == ["acquire", "release"]
    # Each job ran longer than the 8 s visibility timeout would allow without the heartbeat's bump:
    # no copy was ever redelivered while its job ran.
    logs = cluster.log("a") + cluster.log("b")
    assert "this copy is dropped" not in logs
    assert "cxrstudy.train" in cluster.log("a") and "cxrstudy.train" in cluster.log("b")  # both worked
    assert logs.count("aggregate enqueued") == 1
    fetched = cluster.cli("results", sid, "--out", cluster.tmp / "report")
    assert fetched.returncode == 0 and "# Cross-Architecture Comparison" in fetched.stdout, fetched.stderr
    assert (cluster.tmp / "report" / "report.md").read_text() == report
    assert {p.name for p in (cluster.tmp / "report").iterdir()} >= {"report.md", "runs.csv", "report.json"}
    # The worker's parent never loaded torch (so never CUDA): jobs ran in its pool's children.
    for proc in cluster.workers.values():
        maps = open(f"/proc/{proc.pid}/maps").read()
        assert "celery" in open(f"/proc/{proc.pid}/cmdline").read() and "libtorch" not in maps


def lease_events(cluster, job_id):
    return cluster.coord().lease_log(job_id)


def test_sigkill_of_a_worker_mid_run_resumes_on_the_other_from_its_checkpoint(cluster, synthetic):
    cluster.start_worker("a")
    cluster.start_worker("b")
    sid = cluster.submit(cluster.study(synthetic, "test_resnet: [1]\n", epochs=8))
    store = cluster.store()
    (job,) = jobs_of(store, sid)
    cluster.wait_for(lambda: len(epochs_logged(store, job)) >= 2, what="two finished epochs")
    holder = cluster.coord().holder(job.job_id)
    victim = "a" if "cxrstudy.train" in cluster.log("a") and job.job_id in cluster.log("a") else "b"
    killed_at = time.time()
    cluster.kill(victim)
    cluster.workers[victim].wait()
    survivor = "b" if victim == "a" else "a"
    cluster.wait_for(lambda: cluster.report_done(sid), what="the report after the kill")

    assert store.exists(job.keys.result)
    assert epochs_logged(store, job) == list(range(1, 9))  # every epoch once in the final log
    resumed = [ln for ln in cluster.log(survivor).splitlines() if "resuming from checkpoints/last.pt" in ln]
    assert len(resumed) == 1
    start_epoch = int(resumed[0].split("at epoch ")[1].split("/")[0])
    # Two epochs had logged metrics; the kill may land between epoch 2's metrics line and its last.pt:
    # resumed at epoch 2 or 3, never repeated from the start.
    assert start_epoch in (2, 3)
    events = lease_events(cluster, job.job_id)
    assert [e["event"] for e in events] == ["acquire", "acquire", "release"]
    assert events[0]["owner"] == holder and events[1]["owner"] != holder
    assert events[1]["t"] > killed_at  # the second training began after the first process was dead


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(stat)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_a_run_with_loader_workers_trains_in_a_celery_pool_child_and_leaves_no_process(cluster, synthetic):
    cluster.start_worker("a")
    sid = cluster.submit(cluster.study(synthetic, "test_resnet: [1]\n", extra=", num_workers: 2"))
    cluster.wait_for(lambda: cluster.report_done(sid), what="the report")
    (job,) = jobs_of(cluster.store(), sid)
    assert cluster.status(sid)["runs"][0]["state"] == "succeeded", cluster.log("a")[-3000:]
    assert epochs_logged(cluster.store(), job) == [1, 2]
    assert "daemonic processes" not in cluster.log("a")
    spawned = [p for p in _descendants(cluster.workers["a"].pid) if "spawn" in _cmdline(p)]
    assert spawned == []  # the loader's workers ended with the run


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return ""  # it ended meanwhile


def test_redis_flushed_mid_study_resume_completes_without_rerunning_finished_runs(cluster, synthetic):
    cluster.start_worker("a")
    sid = cluster.submit(cluster.study(synthetic, "test_resnet: [1, 2, 3]\n", epochs=4))
    store = cluster.store()
    jobs = jobs_of(store, sid)
    cluster.wait_for(lambda: store.exists(jobs[0].keys.result), what="the first run")
    cluster.redis.flushall()
    finished = {j.job_id: store.get_bytes(j.keys.result) for j in jobs if store.exists(j.keys.result)}
    proc = cluster.cli("resume", sid)
    assert proc.returncode == 0, proc.stderr
    cluster.wait_for(lambda: cluster.report_done(sid), what="the report after resume")
    for job_id, before in finished.items():
        job = next(j for j in jobs if j.job_id == job_id)
        assert store.get_bytes(job.keys.result) == before  # not trained again
    assert all(store.exists(j.keys.result) for j in jobs)
    assert [r["state"] for r in cluster.status(sid)["runs"]] == ["succeeded"] * 3
    listing = cluster.cli("list")
    assert listing.returncode == 0 and f"{sid}  " in listing.stdout and "3 succeeded  report" in listing.stdout


def test_cancel_stops_the_running_run_within_an_epoch_and_queued_runs_never_start(cluster, synthetic):
    cluster.start_worker("a")
    sid = cluster.submit(cluster.study(synthetic, "test_resnet: [1, 2]\ntest_efficientnet: [1]\n", epochs=30))
    store = cluster.store()
    jobs = jobs_of(store, sid)
    cluster.wait_for(lambda: len(epochs_logged(store, jobs[0])) >= 1, what="the first epoch")
    proc = cluster.cli("cancel", sid)
    assert proc.returncode == 0 and "cancel requested" in proc.stdout, proc.stderr
    at_cancel = len(epochs_logged(store, jobs[0]))
    cluster.wait_for(lambda: cluster.report_done(sid), what="the report after cancel")
    assert [r["state"] for r in cluster.status(sid)["runs"]] == ["cancelled"] * 3
    assert len(epochs_logged(store, jobs[0])) <= at_cancel + 1
    for job in jobs[1:]:
        assert not store.exists(job.keys.metrics)  # never started
    report = store.get_text(f"studies/{sid}/report/report.md")
    assert "3 of 3 runs have no test result" in report and report.count("| cancelled |") == 3


def test_a_missing_weights_file_fails_its_run_at_once_with_the_fix_and_the_study_still_reports(cluster, synthetic):
    cluster.start_worker("a")
    runs = "test_resnet: [1]\ntest_efficientnet:\n  seeds: [1]\n  training: {weights: 'store:models/absent.pt'}\n"
    sid = cluster.submit(cluster.study(synthetic, runs, epochs=1))
    cluster.wait_for(lambda: cluster.report_done(sid), what="the report")
    store = cluster.store()
    good, bad = jobs_of(store, sid)
    error = json.loads(store.get_text(bad.keys.error))
    assert error["final"] and error["attempts"] == 1 and "absent.pt does not exist" in error["error"]
    assert "upload the state dict there or fix training.weights" in error["error"]
    assert [e["event"] for e in lease_events(cluster, bad.job_id)] == ["acquire", "release"]  # no retry
    assert store.exists(good.keys.result)
    report = store.get_text(f"studies/{sid}/report/report.md")
    assert "1 of 2 runs have no test result" in report and f"`{bad.job_id}`" in report
    status = cluster.cli("status", sid)
    assert "failed (1 attempt)" in status.stdout and "absent.pt" in status.stdout


def test_sigterm_checkpoints_inside_the_epoch_requeues_and_exits_within_the_grace(cluster, synthetic):
    cluster.start_worker("a")
    sid = cluster.submit(cluster.study(synthetic, "test_resnet: [1]\n", epochs=6))
    store = cluster.store()
    (job,) = jobs_of(store, sid)
    cluster.wait_for(lambda: len(epochs_logged(store, job)) >= 1, what="the first epoch")
    cluster.workers["a"].expected_exit = True
    cluster.workers["a"].send_signal(15)  # to the worker's parent only, as Kubernetes does
    started = time.monotonic()
    cluster.workers["a"].wait(timeout=60)
    assert time.monotonic() - started < 20  # CXRSTUDY_SIGTERM_GRACE
    assert "checkpoint saved at epoch" in cluster.log("a")
    assert not store.exists(job.keys.result)
    cluster.start_worker("b")
    cluster.wait_for(lambda: cluster.report_done(sid), what="the report after the eviction")
    resumed = [ln for ln in cluster.log("b").splitlines() if "resuming from checkpoints/last.pt" in ln]
    assert len(resumed) == 1 and " step " in resumed[0]
    assert epochs_logged(store, job) == list(range(1, 7))


def test_bad_settings_give_one_line_errors(cluster, synthetic, tmp_path):
    study = cluster.study(synthetic, "test_resnet: [1]\n")

    def one_line(proc, *fragments):
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("cxrstudy: error: ") and all(f in line for f in fragments), line

    one_line(cluster.cli("submit", study, "--broker", "redis://127.0.0.1:1/0"), "cannot reach the broker", "--broker")
    one_line(cluster.cli("submit", study, "--broker", "amqp://x"), "redis://", "CXRSTUDY_BROKER_URL")
    cluster.env["AWS_SECRET_ACCESS_KEY"] = "wrong"
    one_line(cluster.cli("submit", study), "AWS_SECRET_ACCESS_KEY")
    cluster.env["AWS_ENDPOINT_URL_S3"] = "http://127.0.0.1:1"
    one_line(cluster.cli("submit", study), "127.0.0.1:1")
    one_line(cluster.cli("status", "nope", "--store", tmp_path / "empty"), "no study 'nope'")
    del cluster.env["CXRSTUDY_BROKER_URL"]
    one_line(cluster.cli("status", "x"), "--broker", "CXRSTUDY_BROKER_URL")


def test_a_rerun_into_a_fresh_store_reports_and_a_worker_resumed_after_losing_its_lease_writes_nothing(
    cluster, synthetic
):
    """Issue 16, both defects, on one Redis: the same study run into two stores.

    The clean store runs fault-free. In the second, the worker training ``test_resnet`` seed 2 is
    SIGSTOPped after its first epoch; the other worker takes the job over, finishes it and releases
    it; then the first is resumed. The fan-in claim of the first store once kept the second from
    ever aggregating, and the resumed worker re-took the vanished lease and wrote the job again.
    """
    study = cluster.study(synthetic, "test_resnet: [1, 2]\ntest_efficientnet: [1, 2]\n", epochs=4, name="rerun")
    cluster.start_worker("a")
    cluster.start_worker("b")
    sid = cluster.submit(study)
    cluster.wait_for(lambda: cluster.report_done(sid), what="the clean store's report")
    clean = cluster.store()
    clean_results = {j.job_id: json.loads(clean.get_text(j.keys.result)) for j in jobs_of(clean, sid)}

    # A second deployment: a fresh prefix, its own workers, the same broker (nothing flushed).
    cluster.close()
    cluster.store_uri = cluster.env["CXRSTUDY_STORE"] = cluster.store_uri + "-rerun"
    cluster.workers.clear()
    cluster.start_worker("c")
    cluster.start_worker("d")
    assert cluster.submit(study) == sid  # the same content, the same study id
    store = cluster.store()
    job = next(j for j in jobs_of(store, sid) if (j.architecture, j.seed) == ("test_resnet", 2))
    first_epoch = f"{job.job_id}: epoch 1/4"
    paused = cluster.wait_for(
        lambda: next((n for n in ("c", "d") if first_epoch in cluster.log(n)), None), what="epoch 1 of the job"
    )
    other = "d" if paused == "c" else "c"
    cluster.kill(paused, signal.SIGSTOP)
    assert "test loss" not in cluster.log(paused).split(first_epoch)[1], "the job ended before the pause"
    cluster.wait_for(lambda: store.exists(job.keys.result), what="the other worker to finish the job")
    cluster.wait_for(lambda: lease_events(cluster, job.job_id)[-1]["event"] == "release", what="the release")
    finished = store.get_bytes(job.keys.result)
    cluster.workers[paused].expected_exit = False
    os.killpg(cluster.workers[paused].pid, signal.SIGCONT)
    stopped = f"{job.job_id}: stopped: another worker holds the job"
    cluster.wait_for(lambda: stopped in cluster.log(paused), what="the resumed worker to stop")
    cluster.wait_for(lambda: cluster.report_done(sid), what="the second store's report")

    resumed_log = cluster.log(paused).split(first_epoch)[1]
    assert f"{job.job_id}: lost its lease (token 1) to " in resumed_log
    assert f"{job.job_id}: test loss" not in resumed_log and "reacquire" not in resumed_log
    events = [(e["owner"].split(":")[0], e["event"], e["token"]) for e in lease_events(cluster, job.job_id)]
    assert [(ev, tok) for _, ev, tok in events] == [("acquire", 1), ("acquire", 2), ("release", 2)]
    assert f"{job.job_id}: resuming from checkpoints/last.pt at epoch 2/4" in cluster.log(other)
    assert store.get_bytes(job.keys.result) == finished  # written once, by the new holder
    assert json.loads(store.get_text(job.keys.fence))["token"] == 2
    assert epochs_logged(store, job) == [1, 2, 3, 4]
    # Faults change no number, and both stores have their report.
    for j in jobs_of(store, sid):
        assert json.loads(store.get_text(j.keys.result))["test"] == clean_results[j.job_id]["test"], j.job_id
    assert clean.exists(f"studies/{sid}/report/report.md") and store.exists(f"studies/{sid}/report/report.md")


def test_an_upload_refused_twice_with_503_succeeds_on_the_third_attempt_after_waits_that_grow(cluster, synthetic):
    import re

    from tests.worker.s3_faults import FaultyS3

    server = cluster.env["AWS_ENDPOINT_URL_S3"]
    proxy = FaultyS3(server, suffix="/result.json", times=2)
    try:
        cluster.env.update(
            AWS_ENDPOINT_URL_S3=proxy.url,
            AWS_MAX_ATTEMPTS="1",  # boto3 gives up at once: each refusal fails the job's attempt
            CXRSTUDY_MAX_ATTEMPTS="3",
            CXRSTUDY_RETRY_BACKOFF="1",
        )
        cluster.start_worker("a")
        sid = cluster.submit(cluster.study(synthetic, "test_resnet: [1]\n", epochs=1))
        cluster.wait_for(lambda: cluster.report_done(sid), what="the report")
    finally:
        proxy.close()
        cluster.env["AWS_ENDPOINT_URL_S3"] = server
    store = cluster.store()
    (job,) = jobs_of(store, sid)
    assert [status for _, status in proxy.puts] == [503, 503, 200]
    assert json.loads(store.get_text(job.keys.result))["status"] == "succeeded"
    assert epochs_logged(store, job) == [1]  # the retries resumed from the checkpoint: no epoch twice
    waits = [float(w) for w in re.findall(r"attempt \d in ([0-9.]+) s \(backoff\)", cluster.log("a"))]
    assert len(waits) == 2 and 0.5 <= waits[0] <= 1.0 <= waits[1] <= 2.0 and waits[1] > waits[0]
    events = lease_events(cluster, job.job_id)
    assert [e["event"] for e in events] == ["acquire", "release"] * 3
    assert [e["token"] for e in events if e["event"] == "acquire"] == [1, 2, 3]
    gaps = [events[i + 1]["t"] - events[i]["t"] for i in (1, 3)]  # from a release to the next acquire
    assert gaps[0] >= waits[0] - 0.05 and gaps[1] >= waits[1] - 0.05, (gaps, waits)
    assert cluster.status(sid)["runs"][0]["state"] == "succeeded"


def test_prepare_fans_out_over_two_cpu_workers_survives_a_kill_and_matches_the_single_process_prepare(
    cluster, nih_sample, tmp_path
):
    from jobs import prepare
    from jobs.spec.configs import PrepConfig
    from jobs.store import LocalStore, layout

    cluster.start_worker("a", queues="cpu")
    cluster.start_worker("b", queues="cpu")
    prep = "{image_size: 64, shard_size: 16}"
    sid = cluster.submit(cluster.study(nih_sample, "test_resnet: [1]\n", epochs=1, preprocessing=prep))
    store = cluster.store()
    prefix = json.loads(store.get_text(f"studies/{sid}/study.json"))["data_prefix"]

    def b_busy():  # b has written a shard and holds the message of another, unacknowledged
        lines = [ln for ln in cluster.log("b").splitlines() if "prepare_shard[" in ln]
        return any("ready in" in ln for ln in lines) and lines[-1].endswith("received")

    cluster.wait_for(b_busy, timeout=120, what="worker b mid-shard")
    cluster.kill("b")
    cluster.wait_for(lambda: store.exists(layout.manifest_key(prefix)), timeout=180, what="the manifest")
    manifest = json.loads(store.get_text(layout.manifest_key(prefix)))
    names = [e["name"] for split in ("train", "val", "test") for e in manifest["splits"][split]["shards"]]
    assert len(names) == len(set(names)) > 4
    assert sorted(o.key for o in store.list(layout.shards_prefix(prefix))) == sorted(
        layout.shard_key(prefix, n) for n in names
    )
    # the same inputs through the single-process prepare: the same bytes, the same manifest
    single = LocalStore(tmp_path / "single")
    config = PrepConfig(image_size=64, shard_size=16)
    expected = prepare.run(str(nih_sample), single, config, manifest["prefix"].split("/")[1], workers=1, log=print)
    assert expected["prefix"] == prefix
    for n in names:
        assert store.get_bytes(layout.shard_key(prefix, n)) == single.get_bytes(layout.shard_key(prefix, n)), n
    assert {k: v for k, v in manifest.items() if k != "created"} == {
        k: v for k, v in expected.items() if k != "created"
    }
    assert "shard" in cluster.log("b") and "ready in" in cluster.log("a")
    assert cluster.wait_for(lambda: cluster.redis.llen("gpu") == 1, timeout=30, what="the run enqueued")
    time.sleep(3)  # a late copy of a shard task enqueues nothing more
    assert cluster.redis.llen("gpu") == 1 and cluster.redis.llen("cpu") == 0


def test_variants_that_differ_in_clahe_prepare_two_datasets_on_the_workers_and_report_both_arms(cluster, synthetic):
    study = cluster.tmp / "arms.yaml"
    study.write_text(
        f"name: arms\ndataset: {synthetic}\npreprocessing: {{image_size: 32, shard_size: 100}}\n"
        "training: {epochs: 1, batch_size: 16, lr: 3.0e-3, warmup_epochs: 0.2, patience: 0}\n"
        "runs: {test_resnet: [1, 2]}\n"
        "variants: {clahe: {}, plain: {preprocessing: {clahe: false}}}\n"
    )
    cluster.start_worker("a")
    proc = cluster.cli("submit", study)
    assert proc.returncode == 0, proc.stderr
    sid = proc.stdout.strip().splitlines()[-1]
    assert proc.stdout.count("enqueued on the cpu queue; its 2 runs follow") == 2  # one prepare per dataset
    cluster.wait_for(lambda: cluster.report_done(sid), what="the report")
    store = cluster.store()
    doc = json.loads(store.get_text(f"studies/{sid}/study.json"))
    assert len(doc["datasets"]) == 2
    for prefix in doc["datasets"]:
        assert store.exists(f"{prefix}/manifest.json")
        assert f"{sid}: shards of {prefix} ready; 2 train jobs enqueued" in cluster.log("a")
    status = cluster.status(sid)
    assert [(r["variant"], r["state"]) for r in status["runs"]] == [
        ("clahe", "succeeded"),
        ("clahe", "succeeded"),
        ("plain", "succeeded"),
        ("plain", "succeeded"),
    ]
    report = store.get_text(f"studies/{sid}/report/report.md")
    assert "[variant clahe]" in report and "[variant plain]" in report and "## test_resnet: clahe − plain (" in report
    text = cluster.cli("status", sid).stdout
    assert "  arm test_resnet@clahe: 2 succeeded; test Avg AUROC " in text
