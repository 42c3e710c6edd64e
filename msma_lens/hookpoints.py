"""Old import path of :mod:`msma_lens.capture.hookpoints`, kept for one release (deprecated)."""

import sys
import warnings

from .capture import hookpoints as _module

warnings.warn("msma_lens.hookpoints moved to msma_lens.capture.hookpoints; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
