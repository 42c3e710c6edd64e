"""Old import path of :mod:`msma_lens.align.maps`, kept for one release (deprecated)."""

import sys
import warnings

from .align import maps as _module

warnings.warn("msma_lens.maps moved to msma_lens.align.maps; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
