"""Shared pytest set-up: CPU, two threads, float64 where a test asks for it."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the analytic.py helpers

torch.set_num_threads(min(2, torch.get_num_threads()))

try:  # the fuzz tests (test_bad_inputs.py): a quick run by default, a long one with HYPOTHESIS_PROFILE=slow
    import os

    from hypothesis import HealthCheck, settings

    common = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)
    settings.register_profile("default", max_examples=150, **common)
    settings.register_profile("slow", max_examples=3000, **{**common, "derandomize": False})
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:  # hypothesis is a test extra
    pass


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def knee():
    """The built-in phantom at 3 mm (phantom, CT ImageVolume, labels ImageVolume): small and quick."""
    from FluoroRegistrationLib.phantom import make_knee_phantom
    from FluoroRegistrationLib.volume import ImageVolume

    ph = make_knee_phantom(spacing_mm=3.0, flexion_deg=0.0, seed=0)
    ct = ImageVolume.from_spacing(ph.hu.astype(np.float32), ph.spacing_mm, ph.origin_mm)
    labels = ImageVolume.from_spacing(ph.labels.astype(np.int32), ph.spacing_mm, ph.origin_mm)
    return ph, ct, labels


@pytest.fixture(scope="session")
def femur_lateral():
    """The phantom at 2 mm, flexion 20 deg, its femur as registration draws it, a 128 px C-arm of
    2 mm pixels and a lateral view 700 mm from the source: (phantom, CT ImageVolume, {"femur":
    RenderVolume}, camera, true pose (4, 4))."""
    from FluoroRegistrationLib.geometry import Camera, lateral_view
    from FluoroRegistrationLib.phantom import make_knee_phantom
    from FluoroRegistrationLib.volume import ImageVolume, registration_volumes

    ph = make_knee_phantom(spacing_mm=2.0, flexion_deg=20.0, seed=0)
    ct = ImageVolume.from_spacing(ph.hu.astype(np.float32), ph.spacing_mm, ph.origin_mm)
    labels = ImageVolume.from_spacing(ph.labels.astype(np.int32), ph.spacing_mm, ph.origin_mm)
    bones = registration_volumes(ct, labels, ph.label_names, ["femur"])
    return ph, ct, bones, Camera(1000.0, 128, 128, 2.0, 2.0), lateral_view(ph.knee_centre_mm, 700.0)
