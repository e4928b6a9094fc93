"""Alias of :mod:`zipar.reference.sjd`, kept for one release (zipar 0.1 -> 0.2).

``import zipar.sjd`` gives the module object of zipar.reference.sjd itself (not a copy):
attributes set through one name are seen through the other. New code imports zipar.reference.sjd.
"""

import sys

from .reference import sjd as _target

sys.modules[__name__] = _target
