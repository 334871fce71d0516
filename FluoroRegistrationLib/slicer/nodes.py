"""MRML nodes to and from NumPy: volume arrays, IJKToRAS, transform matrices, label names.

Works on nodes of any ``vtkMRMLScene`` (Slicer's or one made under plain Python with the PyPI
package ``slicer-core``); ``vtk`` is imported here only, inside the functions. Arrays follow the
core: volumes ``(Z, Y, X)`` indexed ``[k, j, i]``, frames ``(1, rows, cols)``.
"""

from __future__ import annotations

import numpy as np

from ..errors import FluoroRegError
from ..volume import ImageVolume
from .geometry import ijk_to_ras_from_volume, volume_from_index


def node_name(node) -> str:
    return node.GetName() if node is not None else "None"


def check_node(node, class_name: str, what: str):
    """Raise unless ``node`` is a ``class_name`` (a subclass counts); returns the node."""
    if node is None:
        raise FluoroRegError(f"no {what} given; select a {class_name} node")
    if not hasattr(node, "IsA") or not node.IsA(class_name):
        kind = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
        raise FluoroRegError(f"{what} {node_name(node)} is a {kind}; select a {class_name} node")
    return node


def matrix_to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def numpy_to_matrix(m):
    import vtk

    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r][c]))
    return out


def ijk_to_ras(node) -> np.ndarray:
    """A volume node's (4, 4) IJKToRAS (its own, not through any parent transform)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return matrix_to_numpy(m)


def volume_array(node, what: str = "volume") -> np.ndarray:
    """A copy of a scalar volume node's voxels, (Z, Y, X) = ``[k, j, i]``."""
    from vtk.util import numpy_support

    check_node(node, "vtkMRMLScalarVolumeNode", what)
    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise FluoroRegError(f"{what} {node_name(node)} holds no image data; load or compute its voxels first")
    if image.GetNumberOfScalarComponents() != 1:
        raise FluoroRegError(f"{what} {node_name(node)} has {image.GetNumberOfScalarComponents()} components; "
                             "a scalar volume is needed")
    i, j, k = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i).copy()


def set_volume(node, array: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> None:
    """Replace a scalar volume node's voxels (array (Z, Y, X)) and geometry (IJKToRAS (4, 4))."""
    import vtk
    from vtk.util import numpy_support

    array = np.ascontiguousarray(array)
    if array.ndim != 3:
        raise FluoroRegError(f"volume arrays are (Z, Y, X), got shape {array.shape}")
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    # geometry lives in the node (spacing, origin, directions), the image data stays unit-spaced
    node.SetIJKToRASMatrix(numpy_to_matrix(ijk_to_ras_matrix))
    node.SetAndObserveImageData(image)
    node.Modified()


def image_volume(node, what: str = "CT") -> ImageVolume:
    """A volume node as the core's :class:`ImageVolume` in the LPS volume frame.

    The node's own IJKToRAS is used: a CT observing a bone's pose transform is read in its own frame.
    """
    array = volume_array(node, what)
    return ImageVolume(array, volume_from_index(ijk_to_ras(node)), path=f"node {node_name(node)}")


def set_image_volume(node, vol: ImageVolume) -> None:
    """Write an :class:`ImageVolume` (LPS) into a volume node (RAS)."""
    set_volume(node, vol.array, ijk_to_ras_from_volume(vol.volume_from_index))


def to_parent(transform_node) -> np.ndarray:
    """A linear transform node's (4, 4) ToParent matrix."""
    import vtk

    check_node(transform_node, "vtkMRMLLinearTransformNode", "pose transform")
    m = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToParent(m)
    return matrix_to_numpy(m)


def set_to_parent(transform_node, matrix: np.ndarray) -> None:
    check_node(transform_node, "vtkMRMLLinearTransformNode", "pose transform")
    transform_node.SetMatrixTransformToParent(numpy_to_matrix(matrix))


def label_names(label_node) -> dict[str, int]:
    """Label name -> id from the label map's colour table (names of ids present in the volume)."""
    display = label_node.GetDisplayNode() if hasattr(label_node, "GetDisplayNode") else None
    colors = display.GetColorNode() if display is not None else None
    if colors is None:
        raise FluoroRegError(f"label map {node_name(label_node)} has no colour table naming its labels; "
                             "pass bones as a dict like {'femur': 1, 'tibia': 2}")
    from ..volume import check_label_values

    values = check_label_values(volume_array(label_node, "label map"), node_name(label_node))
    ids = [int(v) for v in np.unique(values) if v > 0]
    return {colors.GetColorName(i): i for i in ids if colors.GetColorName(i)}


def get_or_add_referenced(owner, role: str, class_name: str, name: str):
    """The node ``owner`` references as ``role``, made (and referenced) if there is none yet."""
    node = owner.GetNodeReference(role)
    if node is None or not node.IsA(class_name):
        node = owner.GetScene().AddNewNodeByClass(class_name, name)
        owner.SetNodeReferenceID(role, node.GetID())
    return node
