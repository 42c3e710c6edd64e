"""Old import path of :mod:`msma_lens.io.hub`, kept for one release (deprecated)."""

import sys
import warnings

from .io import hub as _module

warnings.warn("msma_lens._hub moved to msma_lens.io.hub; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
