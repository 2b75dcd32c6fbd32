"""The report: the reference's tables per architecture, then what a reviewer needs beyond them.

- :mod:`jobs.report.build`: the whole report from the store (what the aggregate job runs).
- :mod:`jobs.report.reference`: the reference write-ups' four sections and the cross-architecture table.
- :mod:`jobs.report.seeds`: per architecture, seed spread, the seed ensemble, bootstrap intervals,
  the best seed chosen on validation.
- :mod:`jobs.report.comparison`: paired DeLong tests between scorers, external baselines' section.
- :mod:`jobs.report.baselines`: scoring another system's predictions (``cxrstudy evaluate``).
- :mod:`jobs.report.beyond_reference`: assembles the part after the reference's sections.
- :mod:`jobs.report.figures`: the PNGs. :mod:`jobs.report.tables`: markdown and CSV formatting.
- :mod:`jobs.report.options`: what ``cxrstudy report`` asked for, kept with the study.
"""
