"""Alias of :mod:`zipar.io.png`, kept for one release (zipar 0.1 -> 0.2).

``import zipar.png`` gives the module object of zipar.io.png itself (not a copy):
attributes set through one name are seen through the other. New code imports zipar.io.png.
"""

import sys

from .io import png as _target

sys.modules[__name__] = _target
