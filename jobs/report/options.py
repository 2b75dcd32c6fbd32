"""What a user asks of a study's report, kept in the store beside the study, so every later aggregate
(a worker's after ``resume``, or ``cxrstudy report``) keeps it::

    studies/<id>/report_options.json   {"resamples": 1000, "bootstrap_unit": "patient",
                                        "compare": [["densenet121:12", "chexnet"]]}
    studies/<id>/baselines/<name>.csv  an external baseline's predictions (CheXNet-style CSV)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from jobs.errors import ConfigError, DamagedArtifact
from jobs.spec.configs import BOOTSTRAP_UNITS as UNITS
from jobs.spec.study import check_name
from jobs.store import Store, layout
from jobs.store.records import damaged, read_json

DEFAULT_RESAMPLES = 1000


@dataclass
class ReportOptions:
    """What ``cxrstudy report`` asked for, kept for every later aggregate of the study.

    Args:
        resamples: bootstrap resamples for the 95% intervals.
        compare: pairs of scorers to test against each other with DeLong, beyond the architectures'
            ensembles (which are always compared).
        bootstrap_unit: what a resample draws: ``patient`` (each drawn patient with all their test
            images: a cluster bootstrap) or ``image``.
    """

    resamples: int = DEFAULT_RESAMPLES
    compare: list[list[str]] = field(default_factory=list)
    bootstrap_unit: str = UNITS[0]


def load_options(store: Store, study_id: str) -> ReportOptions:
    """The options kept with the study (the defaults when there are none); a :class:`DamagedArtifact`
    naming ``report_options.json`` when it cannot be read as options."""
    key = layout.options_key(study_id)
    fix = (
        f"delete it (the report then uses the defaults) and give `cxrstudy report {study_id}` the "
        "--resamples and --compare you want again"
    )
    data = read_json(store, key, fix)
    if data is None:
        return ReportOptions()
    resamples, compare = data.get("resamples", DEFAULT_RESAMPLES), data.get("compare", [])
    unit = data.get("bootstrap_unit", UNITS[0])
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise DamagedArtifact(damaged(store, key, f"'resamples' is {resamples!r}, not a positive integer", fix))
    if unit not in UNITS:
        raise DamagedArtifact(damaged(store, key, f"'bootstrap_unit' is {unit!r}, not one of {', '.join(UNITS)}", fix))
    pairs = compare if isinstance(compare, list) else [compare]
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise DamagedArtifact(damaged(store, key, f"'compare' holds {pair!r}, not a pair of names", fix))
    return ReportOptions(resamples, [list(p) for p in pairs], unit)


def save_options(store: Store, study_id: str, options: ReportOptions) -> None:
    store.put_text(layout.options_key(study_id), json.dumps(asdict(options), indent=2))


def check_baseline_name(name: str, where: str) -> str:
    try:
        return check_name(name, where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def keep_baseline(store: Store, study_id: str, name: str, data: bytes) -> None:
    """Keep a baseline's CSV with the study (the caller has read it with ``read_prediction_csv``)."""
    store.put_bytes(layout.baseline_key(study_id, check_baseline_name(name, "baseline")), data)


def stored_baselines(store: Store, study_id: str) -> dict[str, str]:
    """``{name: key}`` of the baselines kept with the study, by name."""
    prefix = layout.baselines_prefix(study_id)
    found = {o.key[len(prefix) : -len(".csv")]: o.key for o in store.list(prefix) if o.key.endswith(".csv")}
    return dict(sorted(found.items()))
