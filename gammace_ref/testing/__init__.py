"""Tools for checking γ-CE / TaiLr implementations against ground truth.

``reference`` computes the loss and gradient with mpmath at 60 digits (needs
the ``test`` extra); ``regimes`` is the battery of hard numerical cases.
"""
