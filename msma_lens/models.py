"""Old import path of :mod:`msma_lens.io.models`, kept for one release (deprecated)."""

import sys
import warnings

from .io import models as _module

warnings.warn("msma_lens.models moved to msma_lens.io.models; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
