"""The paper's models, at their old import path: ``from permcodec.models import build_model`` keeps working.

The module lives in ``permcodec.train.models``.
"""

from .train.models import MODELS, build_model, count_weights, same_padded_conv  # noqa: F401 (re-exported)
