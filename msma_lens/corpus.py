"""Old import path of :mod:`msma_lens.io.corpus`, kept for one release (deprecated)."""

import sys
import warnings

from .io import corpus as _module

warnings.warn("msma_lens.corpus moved to msma_lens.io.corpus; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
