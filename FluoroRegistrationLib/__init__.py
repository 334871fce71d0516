"""FluoroRegistrationLib: the Slicer-free core of FluoroRegistration.

Fully differentiable 2D/3D registration of bones (CT) to single-plane fluoroscopy frames.
Frames, units and pose conventions: docs/CONVENTIONS.md. The registration entry point is
:func:`register_frame` (imported lazily, so ``import FluoroRegistrationLib`` stays light).
"""

from .errors import FluoroRegError

__version__ = "0.1.0"
__all__ = ["FluoroRegError", "Registration", "RegistrationConfig", "__version__", "register_frame"]


def __getattr__(name):
    if name in ("register_frame", "Registration", "RegistrationConfig"):
        from . import register

        return getattr(register, name)
    raise AttributeError(f"module 'FluoroRegistrationLib' has no attribute {name!r}")
