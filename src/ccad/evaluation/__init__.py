"""Layer 6, evaluation: how good a model is, on named data, with 95% intervals.

:mod:`~ccad.evaluation.metrics` (metrics, grouped bootstrap, calibration), :mod:`~ccad.evaluation.evaluate`
(``ccad evaluate``), :mod:`~ccad.evaluation.audit` (``ccad audit``), :mod:`~ccad.evaluation.reports`
(figures and HTML pages). May import :mod:`ccad.screening` and below.
"""
