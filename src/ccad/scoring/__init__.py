"""Layer 5, scoring: the network and its parts, under the application layer (:mod:`ccad.screening`).

:mod:`~ccad.scoring.predictor` (one ``Predictor`` interface; ONNX Runtime and Keras implementations),
:mod:`~ccad.scoring.score` (the ``Prediction`` record), :mod:`~ccad.scoring.heatmaps` (class
activation maps).
May import :mod:`ccad.preprocessing` and below. Nothing here imports TensorFlow at module level.
"""
