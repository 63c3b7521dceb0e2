"""pvreg: a registry for LLM preference vectors (arXiv:2504.20106).

The public Python API is deliberately small; everything else lives in
``pvreg.registry`` (service and storage), ``pvreg.schemas`` (boundary models)
and ``pvreg.cli`` (the command line).
"""

from pvreg.registry.gcpause import suspended as _gc_suspended

# The collector is off while these imports run (SQLAlchemy and pydantic build ~10^5 long-lived objects and
# no garbage; see registry/gcpause.py) and as it was after, so an importing program keeps its own settings.
with _gc_suspended():
    from pvreg.registry.api import Registry
    from pvreg.registry.errors import PvregError
    from pvreg.registry.version import __version__

__all__ = ["PvregError", "Registry", "__version__"]
