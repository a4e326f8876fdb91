"""Layer 8 (beside studies and deploy), bundles: everything that makes a model bundle, in one place.

:mod:`~ccad.bundles.export` (``ccad export``: a run folder -> a bundle, ONNX and its card),
:mod:`~ccad.bundles.calibrate` (``ccad calibrate``: a site's threshold, a derived bundle),
:mod:`~ccad.bundles.adapt` (``ccad adapt``: the heads refitted on a site's films; their fit in
:mod:`~ccad.bundles.adapt_heads`), :mod:`~ccad.bundles.guard` (``ccad guard``: the out-of-distribution guard
refitted), :mod:`~ccad.bundles.files` (writing a bundle folder, and a bundle derived from another, atomically).
Reading and checking a bundle (its card, its signature: :mod:`ccad.models.card`, :mod:`ccad.models.signing`)
stays with the models, where the scoring layer loads it. May import :mod:`ccad.training` and below; never
:mod:`ccad.deploy` or :mod:`ccad.studies`.
"""
