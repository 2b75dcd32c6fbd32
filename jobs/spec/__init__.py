"""The study spec: the study file, every setting as a typed dataclass, architecture names, ids.

- :mod:`jobs.spec.study`: the study file (``load_study_file``, ``parse_study``) and its expansion.
- :mod:`jobs.spec.configs`: ``PrepConfig``, ``TrainConfig``, ``LossConfig``, ``AugmentConfig``.
- :mod:`jobs.spec.schema`: mappings -> dataclasses, every key and type checked.
- :mod:`jobs.spec.architectures`: timm's architecture names, from a list shipped with the package.
- :mod:`jobs.spec.runs`: ``JobSpec`` and the content-hash ids.

No torch, timm, OpenCV, numba or matplotlib here: ``cxrstudy submit`` validates a study with this
package alone.
"""
