"""companion: runnable companion notebooks for a reading list of papers about masking.

Modules (one responsibility each): ``params`` (profiles, validation), ``runtime`` (seeding, device,
accelerator), ``data`` (synthetic and real datasets), ``masks`` (mask generators), ``masking``
(applying masks to models), ``models``, ``train``, ``explain`` (LIME and attribution quality),
``viz``, ``claims`` (verdicts), ``catalog`` (the paper list), ``runner``/``cli`` (papermill).
"""

__version__ = "0.1.0"
