"""Old import path of :mod:`msma_lens.align.protocol`, kept for one release (deprecated)."""

import sys
import warnings

from .align import protocol as _module

warnings.warn("msma_lens.alignment moved to msma_lens.align.protocol; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
