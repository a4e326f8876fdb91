"""Layer 8 (beside deploy), studies: experiments made of training runs and evaluations.

:mod:`~ccad.studies.crossval` (``ccad cv``), :mod:`~ccad.studies.compare` (``ccad compare``),
:mod:`~ccad.studies.paper` (``ccad reproduce-paper``; its report in :mod:`~ccad.studies.paper_report`),
:mod:`~ccad.studies.demo` (``ccad demo``).
May import :mod:`ccad.training` and below; never :mod:`ccad.deploy`.
"""
