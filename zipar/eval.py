"""Alias of :mod:`zipar.fmnist.eval`, kept for one release (zipar 0.1 -> 0.2).

``import zipar.eval`` gives the module object of zipar.fmnist.eval itself (not a copy):
attributes set through one name are seen through the other. New code imports zipar.fmnist.eval.
"""

import sys

from .fmnist import eval as _target

sys.modules[__name__] = _target
