"""pvreg: a registry for LLM preference vectors (arXiv:2504.20106).

The public Python API is deliberately small; everything else lives in
``pvreg.registry`` (service and storage), ``pvreg.schemas`` (boundary models)
and ``pvreg.cli`` (the command line).
"""

from pvreg.registry.api import Registry
from pvreg.registry.errors import PvregError
from pvreg.registry.version import __version__

__all__ = ["PvregError", "Registry", "__version__"]
