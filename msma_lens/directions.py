"""Old import path of :mod:`msma_lens.steer.directions`, kept for one release (deprecated)."""

import sys
import warnings

from .steer import directions as _module

warnings.warn("msma_lens.directions moved to msma_lens.steer.directions; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
