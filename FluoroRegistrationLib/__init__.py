"""FluoroRegistrationLib: the Slicer-free core of FluoroRegistration.

Fully differentiable 2D/3D registration of bones (CT) to single-plane fluoroscopy frames.
Frames, units and pose conventions: see CONVENTIONS in the repository README.
"""

from .errors import FluoroRegError

__version__ = "0.1.0"
__all__ = ["FluoroRegError", "__version__"]
