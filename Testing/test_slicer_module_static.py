"""The Slicer module without Slicer: its .ui, its Python and its CMake lists agree with each other."""

import ast
import fnmatch
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "FluoroRegistration"
UI = MODULE / "Resources" / "UI" / "FluoroRegistration.ui"
SOURCE = MODULE / "FluoroRegistration.py"


def ui_widgets():
    """name -> (class, SlicerParameterName or None) for every named widget of the .ui."""
    root = ET.parse(UI).getroot()
    out = {}
    for widget in root.iter("widget"):
        if widget.get("name"):
            param = [p.findtext("string") for p in widget.findall("property") if p.get("name") == "SlicerParameterName"]
            out[widget.get("name")] = (widget.get("class"), param[0] if param else None)
    return out


def module_tree():
    return ast.parse(SOURCE.read_text())


def test_ui_root_is_a_qmrmlwidget_and_every_self_ui_name_exists():
    root = ET.parse(UI).getroot()
    assert root.find("widget").get("class") == "qMRMLWidget"
    widgets = ui_widgets()
    used = {node.attr for node in ast.walk(module_tree()) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    assert len(used) >= 15
    missing = sorted(used - set(widgets))
    assert not missing, f"self.ui.<name> not in {UI.name}: {missing}"


def test_every_slicer_parameter_name_is_a_field_of_the_parameter_node():
    classes = {c.name: c for c in ast.walk(module_tree()) if isinstance(c, ast.ClassDef)}
    node_class = classes["FluoroRegistrationParameterNode"]
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node_class.decorator_list)
    fields = {s.target.id for s in node_class.body if isinstance(s, ast.AnnAssign)}
    bound = {param for _, param in ui_widgets().values() if param}
    assert bound and not sorted(bound - fields), f"SlicerParameterName without a field: {sorted(bound - fields)}"
    # the module's parts, in the Extension Wizard's names
    assert {"FluoroRegistration", "FluoroRegistrationWidget", "FluoroRegistrationLogic", "FluoroRegistrationTest"} <= set(classes)
    # MRML selectors are given the scene by the root's mrmlSceneChanged signal
    receivers = {c.findtext("receiver") for c in ET.parse(UI).getroot().iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    selectors = {n for n, (cls, _) in ui_widgets().items() if cls in ("qMRMLNodeComboBox", "qMRMLTransformSliders")}
    assert selectors and selectors <= receivers


def cmake_listed_files(cmake: Path):
    """Files a CMakeLists.txt lists in set(...) blocks (variables substituted), and its GLOB patterns."""
    text = re.sub(r"#.*", "", cmake.read_text())
    variables = dict(re.findall(r"set\((\w+)\s+([^\s)]+)\s*\)", text))
    files = []
    for _, body in re.findall(r"set\((\w+)\s+([^)]*)\)", text):
        for item in body.split():
            item = re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), item)
            if "." in Path(item).name and "$" not in item and not item.startswith('"'):
                files.append(cmake.parent / item)
    globs = [g.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "") for g in re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/\S+\*\.py", text)]
    return files, globs


def test_every_file_the_cmake_lists_name_exists_and_every_resource_is_listed():
    files, _ = cmake_listed_files(MODULE / "CMakeLists.txt")
    assert files and all(f.is_file() for f in files), [str(f) for f in files if not f.is_file()]
    resources = {p for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert resources <= set(files), f"resources not in the CMake list: {sorted(map(str, resources - set(files)))}"
    assert SOURCE in files
    top = (ROOT / "CMakeLists.txt").read_text()
    for sub in re.findall(r"add_subdirectory\((\w+)\)", top):
        assert (ROOT / sub / "CMakeLists.txt").is_file()
    _, globs = cmake_listed_files(ROOT / "CMakeLists.txt")
    assert globs == ["FluoroRegistrationLib/*.py"] and "GLOB_RECURSE" in top
    scene_logic = ROOT / "FluoroRegistrationLib" / "slicer" / "scene_logic.py"
    assert fnmatch.fnmatch(str(scene_logic.relative_to(ROOT)), globs[0])  # the recursive glob ships the subpackage


def installed_layout() -> set:
    """Where slicerMacroBuildScriptedModule puts each script, as Slicer's macro computes it (CMake/
    SlicerMacroBuildScriptedModule.cmake, 5.6-5.10): qt-scripted-modules[/<name of the calling
    CMakeLists' folder> if WITH_SUBDIR]/<script path relative to that folder>."""
    out = set()
    for cmake in (ROOT / "CMakeLists.txt", MODULE / "CMakeLists.txt"):
        text = re.sub(r"#.*", "", cmake.read_text())
        subdir = f"/{cmake.parent.name}" if "WITH_SUBDIR" in text else ""
        files, globs = cmake_listed_files(cmake)
        scripts = [f for f in files if f.suffix == ".py"] + [p for g in globs for p in cmake.parent.glob(g.replace("*.py", "**/*.py"))]
        out |= {f"qt-scripted-modules{subdir}/{f.relative_to(cmake.parent).as_posix()}" for f in scripts}
    return out


def test_a_built_extension_can_import_its_core():
    """Slicer puts qt-scripted-modules on sys.path: the module and the core's package must sit right in it."""
    layout = installed_layout()
    assert "qt-scripted-modules/FluoroRegistration.py" in layout
    assert "qt-scripted-modules/FluoroRegistrationLib/__init__.py" in layout
    assert "qt-scripted-modules/FluoroRegistrationLib/slicer/scene_logic.py" in layout
    assert not [p for p in layout if p.count("/") > 1 and p.split("/")[1] not in ("FluoroRegistrationLib", "Resources")]


def _module_function(name: str):
    """A function of FluoroRegistration.py run without Slicer (it must use only the standard library)."""
    import re as re_module
    from pathlib import Path as PathClass

    tree = module_tree()
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"re": re_module, "Path": PathClass, "POSE_ROLES": {"initial": "FluoroInitialPose",
                                                                     "output": "FluoroOutputPose"}}
    exec(compile(ast.Module([node], []), str(SOURCE), "exec"), namespace)
    return namespace[name]


def test_a_source_checkout_given_as_a_module_path_finds_its_core(tmp_path):
    core_search_path = _module_function("core_search_path")
    assert core_search_path(str(SOURCE)) == ROOT  # the checkout: its root goes on sys.path
    built = tmp_path / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    built.mkdir(parents=True)
    (built / "FluoroRegistration.py").write_text("")
    assert core_search_path(str(built / "FluoroRegistration.py")) is None  # a built extension: nothing to add
    assert "_ROOT = core_search_path(__file__)" in SOURCE.read_text() and "sys.path.insert(0, str(_ROOT))" in SOURCE.read_text()


def test_node_unions_of_the_parameter_node_allow_none():
    """parameterNodeWrapper cannot write the default of a node union without None (Slicer's docs)."""
    classes = {c.name: c for c in ast.walk(module_tree()) if isinstance(c, ast.ClassDef)}
    for field in classes["FluoroRegistrationParameterNode"].body:
        if isinstance(field, ast.AnnAssign) and "Union[" in ast.unparse(field.annotation):
            assert "None" in ast.unparse(field.annotation), ast.unparse(field)


def test_pose_roles_survive_a_saved_scene(tmp_path):
    """Reference roles are saved as role:id;...: the module's roles hold no ':' or ';', and a scene
    saved and loaded again (slicer-core's real MRML) keeps the link; a role with a colon loses it."""
    slicer = __import__("pytest").importorskip("slicer", reason="needs the PyPI package slicer-core")
    pose_role = _module_function("pose_role")
    roles = [pose_role("initial", "femur"), pose_role("output", "tibia plateau:2")]
    assert roles[0] == "FluoroInitialPose_femur" and all(re.fullmatch(r"\w+", r) for r in roles)
    scene = slicer.vtkMRMLScene()
    owner = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "FluoroRegistration")
    poses = [scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", f"pose {i}") for i in range(3)]
    for role, pose in zip(roles + ["FluoroInitialPose:femur"], poses):
        owner.SetNodeReferenceID(role, pose.GetID())
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    again = slicer.vtkMRMLScene()
    again.SetURL(str(tmp_path / "scene.mrml"))
    assert again.Connect()
    loaded = again.GetFirstNodeByName("FluoroRegistration")
    assert [loaded.GetNodeReference(r).GetName() for r in roles] == ["pose 0", "pose 1"]
    assert loaded.GetNodeReference("FluoroInitialPose:femur") is None  # why the roles changed


def test_only_the_slicer_subpackage_of_the_core_imports_slicer_or_vtk():
    offenders = []
    for path in (ROOT / "FluoroRegistrationLib").rglob("*.py"):
        if "slicer" in path.relative_to(ROOT / "FluoroRegistrationLib").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("slicer", "vtk", "qt", "ctk")]
    assert not offenders, offenders
    # and the scene logic never reaches for Slicer's application or global scene (code, not docstrings)
    for path in (ROOT / "FluoroRegistrationLib" / "slicer").glob("*.py"):
        used = {f"slicer.{n.attr}" for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name) and n.value.id == "slicer"}
        assert not used & {"slicer.app", "slicer.mrmlScene", "slicer.util", "slicer.modules"}, (path.name, used)


def test_torch_is_imported_on_first_use_only():
    """Slicer must start without torch: the module imports neither torch nor the core at the top level."""
    top_level = [n for n in module_tree().body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top_level for a in n.names] + [n.module for n in top_level if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n and n.split(".")[0] in ("torch", "FluoroRegistrationLib")]
    assert "installTorch" in SOURCE.read_text() and "pip_install(\"SimpleITK" not in SOURCE.read_text()


def _parameter_fields():
    classes = {c.name: c for c in ast.walk(module_tree()) if isinstance(c, ast.ClassDef)}
    return {s.target.id: ast.unparse(s.annotation) for s in classes["FluoroRegistrationParameterNode"].body
            if isinstance(s, ast.AnnAssign)}


def test_number_fields_bound_to_spin_boxes_carry_their_ranges():
    """parameterNodeWrapper gives a spin box the field's WithinRange/Minimum; a bare float would let the
    panel take a pixel spacing of 0 or a negative distance (issue 19)."""
    fields = _parameter_fields()
    spin = {param for cls, param in ui_widgets().values() if param and cls in ("QSpinBox", "QDoubleSpinBox",
                                                                                 "ctkSliderWidget", "ctkDoubleSpinBox")}
    assert spin >= {"sddMm", "rows", "rowSpacingMm", "distortionK"}
    bare = sorted(f for f in spin if "WithinRange" not in fields[f] and "Minimum" not in fields[f])
    assert not bare, f"number fields without a range: {bare}"
    assert "WithinRange(0.05, 5.0)" in fields["rowSpacingMm"] and "WithinRange(300.0, 3000.0)" in fields["sddMm"]


def test_transform_sliders_show_the_pose_and_turn_about_the_bone():
    """GLOBAL sliders show the transform's own translation (LOCAL ones restart at 0) and turn about the
    centre of transformation, which the module puts at the bone's centroid."""
    root = ET.parse(UI).getroot()
    refs = [w.find("property[@name='CoordinateReference']/enum").text for w in root.iter("widget")
            if w.get("class") == "qMRMLTransformSliders"]
    assert refs == ["qMRMLTransformSliders::GLOBAL"] * 2
    source = SOURCE.read_text()
    assert "SetCenterOfTransformation" in source and "self.logic.centreOnBone" in source


def _method(class_name, name):
    classes = {c.name: c for c in ast.walk(module_tree()) if isinstance(c, ast.ClassDef)}
    return next(f for f in classes[class_name].body if isinstance(f, ast.FunctionDef) and f.name == name)


def test_entering_makes_no_nodes_cleanup_stops_timers_and_a_missing_torch_is_not_a_failure():
    on_bone = ast.unparse(_method("FluoroRegistrationWidget", "onBoneChanged"))
    assert "create=False" in on_bone
    cleanup = ast.unparse(_method("FluoroRegistrationWidget", "cleanup"))
    for timer in ("_pollTimer", "_coarseTimer", "_restTimer"):
        assert timer in cleanup
    assert ".stop()" in cleanup
    test = ast.unparse(_method("FluoroRegistrationTest", "test_register_phantom_femur"))
    assert "skipTest" not in test and "Test not run" in test


def test_a_segmentation_is_exported_only_when_it_changes_and_the_model_path_is_checked():
    label_node = ast.unparse(_method("FluoroRegistrationLogic", "labelNode"))
    assert "GetMTime()" in label_node and "EXPORTED_ATTRIBUTE" in label_node
    segment = ast.unparse(_method("FluoroRegistrationLogic", "segment"))
    assert segment.index("modelFolder") < segment.index("AddNewNodeByClass")


def test_extension_metadata_points_at_files_in_this_repository():
    text = (ROOT / "CMakeLists.txt").read_text()
    meta = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert meta.get(key), f"{key} is empty"
    urls = meta["EXTENSION_SCREENSHOTURLS"].split() + [meta["EXTENSION_ICONURL"]]
    for url in urls:
        assert url.startswith("https://raw.githubusercontent.com/") and url.endswith(".png")
        path = ROOT / url.split("/main/", 1)[1]
        assert path.is_file(), f"{url}: no {path.relative_to(ROOT)} in the repository"
