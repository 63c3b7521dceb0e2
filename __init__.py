"""pvreg: a registry for LLM preference vectors (arXiv:2504.20106).

The public Python API is deliberately small; everything else lives in
``pvreg.registry`` (service and storage), ``pvreg.schemas`` (boundary models)
and ``pvreg.cli`` (the command line).
"""

from pvreg.registry.api import Registry
from pvreg.registry.errors import PvregError

__version__ = "0.1.0"

__all__ = ["Registry", "PvregError", "__version__"]
