"""FluoroRegistration: the 3D Slicer scripted module.

A thin layer over FluoroRegistrationLib (which never imports Slicer). This version registers the
module and offers the core's DRR rendering to Slicer's Python console; the GUI (pose sliders, live
DRR overlay, mask preview, Register) is the Slicer-module issue's work.
"""

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)


class FluoroRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "FluoroRegistration"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["FluoroRegistration developers"]
        self.parent.helpText = (
            "Differentiable 2D/3D registration of bones in a CT to a single-plane fluoroscopy frame. "
            "Poses are camera_from_volume transforms; see the extension's README for the conventions.")
        self.parent.acknowledgementText = "Built on PyTorch, SimpleITK and 3D Slicer."


class FluoroRegistrationWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = FluoroRegistrationLogic()


class FluoroRegistrationLogic(ScriptedLoadableModuleLogic):
    """Console access to the core: ``FluoroRegistrationLogic().core()`` returns FluoroRegistrationLib.

    torch is imported on first use only (never at Slicer start-up).
    """

    def core(self):
        import FluoroRegistrationLib

        return FluoroRegistrationLib


class FluoroRegistrationTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_core_imports()

    def test_core_imports(self):
        lib = FluoroRegistrationLogic().core()
        self.assertTrue(hasattr(lib, "__version__"))
