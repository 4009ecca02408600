"""One module per paper, named after its notebook: ``methods/<topic>/<slug>.py`` ↔ ``notebooks/<slug>.ipynb``.

A method module holds what only its paper needs; anything a second paper needs moves down into the core
packages (``data``, ``masks``, ``masking``, ``models``, ``train``, ``zoo``). The topic is the paper's
``topic`` in ``notebooks/papers.toml`` with ``-`` as ``_``.
"""
