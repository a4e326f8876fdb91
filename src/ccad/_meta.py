"""What the whole package shares and every layer may read: the version and the defaults (the lowest layer, with
:mod:`ccad.errors`; ``ccad/__init__.py`` is only the front door)."""

__version__ = "0.1.0"
#: The class sensitivity, specificity and ROC refer to unless ``--positive`` (or a model) says otherwise.
DEFAULT_POSITIVE = "covid"
