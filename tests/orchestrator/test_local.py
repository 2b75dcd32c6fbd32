"""`cxrstudy run` in this process: a run that fails is recorded, the others go on, and the command exits 1."""

from __future__ import annotations

import json
import textwrap

from jobs import train
from jobs.errors import DamagedArtifact
from jobs.store import layout
from jobs.store.records import study_ids
from orchestrator import cli


def test_a_failed_run_is_recorded_the_report_written_and_the_command_exits_1(
    prepared, synthetic, tmp_path, capsys, monkeypatch
):
    store, _ = prepared  # the synthetic set is prepared there already: the study skips prepare
    study = tmp_path / "study.yaml"
    study.write_text(
        textwrap.dedent(f"""\
        name: one-fails
        dataset: {synthetic}
        preprocessing: {{image_size: 48, shard_size: 64}}
        training: {{epochs: 1, batch_size: 16, lr: 3.0e-3, warmup_epochs: 0.2, patience: 0}}
        runs: {{test_resnet: [1, 2]}}
        """)
    )
    real = train.run
    damage = "s/checkpoints/best.pt cannot be read (EOFError); it was set aside as s/best.pt.damaged-x"

    def second_seed_damaged(job, store, log):
        if job.seed == 2:
            raise DamagedArtifact(damage)  # one run's own file: the study goes on without it
        return real(job, store, log=log)

    monkeypatch.setattr(train, "run", second_seed_damaged)

    assert cli.main(["run", str(study), "--store", store.uri]) == 1

    out, err = capsys.readouterr()
    assert "is up to date (same dataset and config); skipped" in out and "# Cross-Architecture Comparison" in out
    (sid,) = [s for s in study_ids(store) if s.startswith("one-fails-")]
    jobs = {j["seed"]: j["job_id"] for j in json.loads(store.get_text(layout.study_key(sid)))["jobs"]}
    failed = layout.job_keys(sid, jobs[2])
    assert err.splitlines() == [
        f"cxrstudy: error: study {sid}: 1 of 2 runs did not succeed: test_resnet seed 2 failed, see "
        f"{store.url(failed.error)}"
    ]
    error = json.loads(store.get_text(failed.error))
    assert (error["error"], error["final"]) == (damage, True)
    assert store.exists(layout.job_keys(sid, jobs[1]).result) and store.exists(layout.report_markdown_key(sid))
