"""Alias of :mod:`zipar.fmnist.builtin`, kept for one release (zipar 0.1 -> 0.2).

``import zipar.builtin`` gives the module object of zipar.fmnist.builtin itself (not a copy):
attributes set through one name are seen through the other. New code imports zipar.fmnist.builtin.
"""

import sys

from .fmnist import builtin as _target

sys.modules[__name__] = _target
