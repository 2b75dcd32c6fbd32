"""Errors a user can act on.

Every exception raised at a boundary (a study file, a dataset folder, a store URI, a model name)
is a :class:`CxrStudyError` whose message names what was wrong, where, and what to do. The CLI
prints such an error on one line and exits non-zero, without a traceback.
"""


class CxrStudyError(Exception):
    """Base class: the message is complete and meant for the user."""


class StudyFileError(CxrStudyError):
    """A study file is missing, not YAML, or has a wrong field."""


class DatasetError(CxrStudyError):
    """A dataset folder or bucket is not in the NIH ChestX-ray14 layout, or a file in it is bad."""


class StoreError(CxrStudyError):
    """The object store cannot be reached, or a key is missing."""


class NoSuchObject(StoreError):
    """The key names no object (it was never written, or was removed)."""


class ConfigError(CxrStudyError):
    """A setting names something that does not exist (an architecture, a loss, an optimizer)."""


class PredictionsError(CxrStudyError):
    """A predictions CSV is missing, malformed, or does not match the dataset."""


class LeaseLost(CxrStudyError):
    """A running job's lease was taken by another worker: this worker must stop without writing."""


class BrokerUnreachable(LeaseLost):
    """The broker could not confirm a running job's lease for too long: stop without writing and
    requeue the job (its lease expires meanwhile, so another worker may take it)."""


class DamagedArtifact(CxrStudyError):
    """A file in the store cannot be read as what it should be (a shard, a checkpoint, a JSON record):
    retrying cannot help; the message names the key and how to make it again."""
