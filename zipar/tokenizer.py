"""Alias of :mod:`zipar.fmnist.tokenizer`, kept for one release (zipar 0.1 -> 0.2).

``import zipar.tokenizer`` gives the module object of zipar.fmnist.tokenizer itself (not a copy):
attributes set through one name are seen through the other. New code imports zipar.fmnist.tokenizer.
"""

import sys

from .fmnist import tokenizer as _target

sys.modules[__name__] = _target
