"""Old import path of :mod:`msma_lens.tl`, kept for one release."""

import sys

from . import tl as _module

sys.modules[__name__] = _module
