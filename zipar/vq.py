"""Alias of :mod:`zipar.families.vq16`, kept for one release (zipar 0.1 -> 0.2).

``import zipar.vq`` gives the module object of zipar.families.vq16 itself (not a copy):
attributes set through one name are seen through the other. New code imports zipar.families.vq16.
"""

import sys

from .families import vq16 as _target

sys.modules[__name__] = _target
