"""Layer 5, scoring: the network and its parts, under the application layer (:mod:`ccad.screening`).

:mod:`~ccad.scoring.predictor` (one ``Predictor`` interface; ONNX Runtime and Keras implementations),
:mod:`~ccad.scoring.heatmaps` (class activation maps). The ``Prediction`` record a screener makes lives with it,
in :mod:`ccad.screening.records`.
May import :mod:`ccad.preprocessing` and below. Nothing here imports TensorFlow at module level.
"""
