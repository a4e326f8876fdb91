"""Layer 5, scoring: a trained model applied to images, the same way for every command.

:mod:`~ccad.scoring.predictor` (one ``Predictor`` interface; ONNX Runtime and Keras implementations),
:mod:`~ccad.scoring.score` (``score_batch`` -> ``Prediction``), :mod:`~ccad.scoring.heatmaps` (class
activation maps), :mod:`~ccad.scoring.results` (CSV, table, JSON, heatmap files; ``ccad predict``).
May import :mod:`ccad.preprocessing` and below. Nothing here imports TensorFlow at module level.
"""
