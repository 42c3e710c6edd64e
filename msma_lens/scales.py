"""Old import path of :mod:`msma_lens.capture.scales`, kept for one release (deprecated)."""

import sys
import warnings

from .capture import scales as _module

warnings.warn("msma_lens.scales moved to msma_lens.capture.scales; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
