"""Old import path of :mod:`msma_lens.io.artifacts`, kept for one release (deprecated)."""

import sys
import warnings

from .io import artifacts as _module

warnings.warn("msma_lens.artifacts moved to msma_lens.io.artifacts; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
