"""Old import path of :mod:`msma_lens.capture.activations`, kept for one release (deprecated)."""

import sys
import warnings

from .capture import activations as _module

warnings.warn("msma_lens.activations moved to msma_lens.capture.activations; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
