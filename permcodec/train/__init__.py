"""Training by LaPerm: the optimizer wrapper, the loop, the paper's models, datasets and augmentation.

Imports ``permcodec.init`` (init specs), never ``permcodec.format``.
"""
