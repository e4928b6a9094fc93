"""Use the installed zipar when there is one; else the repository (after an in-place build)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    from zipar import _ext   # the binding is loaded on first use: load it now

    _ext.core()
except ImportError:  # no build, or an older install without zipar._ext: forget all of it
    for name in [m for m in sys.modules if m == "zipar" or m.startswith("zipar.")]:
        del sys.modules[name]
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
