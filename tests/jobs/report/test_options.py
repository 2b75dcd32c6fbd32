"""report_options.json: what `cxrstudy report` asked for; a damaged one is one error naming it, never a traceback."""

import json

import pytest

from jobs.errors import DamagedArtifact
from jobs.report.options import ReportOptions, load_options, save_options
from jobs.store import LocalStore, layout

FIX = (
    "delete it (the report then uses the defaults) and give `cxrstudy report s-1` the --resamples and "
    "--compare you want again"
)


@pytest.mark.parametrize(
    "text, what",
    [
        ('{"resamples": 200, "compare": [["a", ', "not valid JSON (Expecting value: line 1 column 38 (char 37))"),
        ("", "not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        ("[200]", "a JSON list, not an object"),
        ('{"resamples": "many"}', "'resamples' is 'many', not a positive integer"),
        ('{"resamples": 0}', "'resamples' is 0, not a positive integer"),
        ('{"compare": [["a", "b", "c"]]}', "'compare' holds ['a', 'b', 'c'], not a pair of names"),
        ('{"compare": "a b"}', "'compare' holds 'a b', not a pair of names"),
    ],
)
def test_damaged_options_name_the_file_and_what_to_do(tmp_path, text, what):
    store = LocalStore(tmp_path)
    store.put_text(layout.options_key("s-1"), text)
    with pytest.raises(DamagedArtifact) as err:
        load_options(store, "s-1")
    assert str(err.value) == f"{tmp_path}/studies/s-1/report_options.json is damaged: {what}; {FIX}"


def test_truncated_options_written_by_save_options(tmp_path):
    store = LocalStore(tmp_path)
    save_options(store, "s-1", ReportOptions(300, [["a:1", "b"]]))
    text = store.get_text(layout.options_key("s-1"))
    json.loads(text)
    store.put_text(layout.options_key("s-1"), text[: len(text) // 2])
    with pytest.raises(DamagedArtifact, match=r"report_options.json is damaged: not valid JSON \("):
        load_options(store, "s-1")
