"""What a submission keeps beside study.json: the study file's report and tracking settings."""

import json

from jobs.report.options import ReportOptions, load_options, save_options
from jobs.spec.study import parse_study
from jobs.store import LocalStore
from orchestrator.submission import keep_report_settings, keep_tracking_settings

BASE = {"name": "k", "dataset": "/d", "runs": {"densenet121": [1]}}


def test_report_settings_merge_over_what_cxrstudy_report_kept(tmp_path):
    store = LocalStore(tmp_path)
    save_options(store, "k-1", ReportOptions(resamples=500, compare=[["a", "b"]]))
    keep_report_settings(store, "k-1", parse_study(BASE))  # no report: nothing changes
    assert load_options(store, "k-1") == ReportOptions(500, [["a", "b"]], "patient")
    keep_report_settings(store, "k-1", parse_study({**BASE, "report": {"bootstrap_unit": "image"}}))
    assert load_options(store, "k-1") == ReportOptions(500, [["a", "b"]], "image")


def test_tracking_settings_are_kept_for_the_workers_and_removed_with_the_section(tmp_path):
    store = LocalStore(tmp_path)
    keep_tracking_settings(store, "k-1", parse_study({**BASE, "tracking": {"mlflow": "http://m:5000"}}))
    kept = json.loads(store.get_text("studies/k-1/tracking.json"))
    assert kept == {"mlflow": "http://m:5000", "experiment": None}
    keep_tracking_settings(store, "k-1", parse_study(BASE))
    assert not store.exists("studies/k-1/tracking.json")
