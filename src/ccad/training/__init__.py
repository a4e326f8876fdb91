"""Layer 7, training: fitting models on labelled data and writing what they need to run.

:mod:`~ccad.training.config` (settings, presets), :mod:`~ccad.training.fit` (the loops),
:mod:`~ccad.training.distributed` (multi-worker), :mod:`~ccad.training.heads` (scikit-learn heads, WOA),
:mod:`~ccad.training.run` (``ccad train``: the run folder), :mod:`~ccad.training.severity` (``ccad
severity``), :mod:`~ccad.training.lung_segmenter` (``ccad lungs train``; its scores in
:mod:`~ccad.training.lung_segmenter_scores`). Making bundles from a run (export, calibrate, adapt, the guard's
refit) is :mod:`ccad.bundles`. May import :mod:`ccad.evaluation` and below (a run scores its own test split).
"""
