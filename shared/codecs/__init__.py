"""Feature-map and input codecs: how a tensor becomes bytes and back (docs/wire-format.md).

The public names are those of ``core`` (its ``__all__``); the codec implementations
live in ``base``, ``plain``, ``quant`` and ``image``.
"""

from splitmq.shared.codecs.core import *  # noqa: F403
from splitmq.shared.codecs.core import __all__ as __all__
