"""Layer 8 (beside studies), deploy: a trained model put where it is used.

:mod:`~ccad.deploy.export` (``ccad export``: the bundle), :mod:`~ccad.deploy.web` (``ccad serve``: web
tool and REST API), :mod:`~ccad.deploy.scale` (``ccad predict --engine ray``). Serving and Ray scoring run
on :class:`ccad.scoring.predictor.OnnxPredictor` and never import TensorFlow. May import
:mod:`ccad.training` and below; never :mod:`ccad.studies`.
"""
