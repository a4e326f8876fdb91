"""Layer 2, data: labelled images (folders, manifests, pooled sources), patient-grouped splits, synthetic data.

May import :mod:`ccad.io`.
"""
