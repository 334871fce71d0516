"""The lumbar spine phantom and its scene: anatomy as built (labels, sizes, lordosis, neighbours,
gas), the segmental motion against its analytic definition, and a simulated lateral frame whose
truth pose puts each vertebra where its mask is."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from FluoroRegistrationLib.geometry import Camera, rotation_angle, transform_points
from FluoroRegistrationLib.phantom import write_phantom
from FluoroRegistrationLib.phantom_spine import SPINE_LABELS, VERTEBRAE, make_spine_phantom
from FluoroRegistrationLib.simulate.spine_scene import (SEGMENT_SHARE, SpineState, is_spine,
                                                        spine_poses, spine_relative_poses, vertebrae)
from FluoroRegistrationLib.volume import load_ct, load_labels


@pytest.fixture(scope="module")
def spine():
    return make_spine_phantom(spacing_mm=2.0, seed=3)


def test_every_vertebra_is_one_body_between_its_neighbours_and_grows_downward(spine):
    volumes = []
    for v in VERTEBRAE:
        mask = spine.labels == SPINE_LABELS[v]
        _, parts = ndimage.label(mask)
        assert parts == 1, f"{v} is {parts} pieces"
        volumes.append(mask.sum() * 8.0)
    assert all(a < b for a, b in zip(volumes, volumes[1:])), volumes
    assert 25e3 < volumes[0] and volumes[-1] < 70e3  # cm^3 of a lumbar vertebra: tens
    # vertebrae do not touch: the disc (and the facet joints' gap) keeps one voxel between them
    for up, low in zip(VERTEBRAE, VERTEBRAE[1:]):
        grown = ndimage.binary_dilation(spine.labels == SPINE_LABELS[up])
        assert not (grown & (spine.labels == SPINE_LABELS[low])).any(), f"{up} touches {low}"
    for other in ("ribs", "pelvis"):
        assert (spine.labels == SPINE_LABELS[other]).sum() > 5e3 / 8


def test_lordosis_tissue_and_gas(spine):
    y = {v: c[1] for v, c in spine.body_centres_mm.items()}
    assert min(y, key=y.get) == "L3" and y["L1"] > y["L3"] + 5 and y["L5"] > y["L3"] + 5
    assert spine.tilts_deg["L1"] < 0 < spine.tilts_deg["L5"]
    bone = spine.labels > 0
    assert np.percentile(spine.hu[bone], 95) > 900 and np.percentile(spine.hu[bone], 20) < 400
    corner = spine.hu[:, 0, 0]
    assert (corner == -1000).all()  # air outside the trunk
    inside = ndimage.binary_erosion(spine.hu > -900, iterations=3)
    assert (spine.hu[inside] < -500).sum() * 8.0 > 5e3  # bowel gas inside the trunk (mm^3)


def test_segmental_motion_turns_each_vertebra_by_the_shares_below_it():
    centres = {v: np.array([0.0, 0.002 * z ** 2, z]) for v, z in zip(VERTEBRAE, (68.0, 34.0, 0.0, -35.0, -70.0))}
    rel = spine_relative_poses(centres, 20.0)
    for k, v in enumerate(VERTEBRAE):
        assert rotation_angle(rel[v][:3, :3]) == pytest.approx(math.radians(20.0 * sum(SEGMENT_SHARE[k:])), abs=1e-9)
    # the lowest vertebra turns about the disc below it; forward bending moves the top forward (-y)
    below_l5 = torch.tensor(centres["L5"] + 0.5 * (centres["L5"] - centres["L4"]))
    assert torch.allclose(transform_points(rel["L5"], below_l5[None]), below_l5[None], atol=1e-9)
    top = transform_points(rel["L1"], torch.tensor(centres["L1"])[None])[0]
    assert top[1] < centres["L1"][1] - 15
    assert all(torch.allclose(T, torch.eye(4, dtype=torch.float64)) for T in spine_relative_poses(centres, 0.0).values())
    poses = spine_poses(centres, SpineState((0.0,) * 6, 10.0), 700.0, ["L1", "ribs", "pelvis"])
    assert torch.allclose(poses["ribs"], poses["L1"])
    middle = transform_points(poses["pelvis"], torch.tensor(centres["L3"])[None])[0]
    assert torch.allclose(middle, torch.tensor([0.0, 0.0, 700.0], dtype=torch.float64), atol=1e-9)


def test_a_simulated_lateral_frame_puts_each_vertebra_where_its_mask_is(spine, tmp_path):
    from FluoroRegistrationLib.files import read_poses
    from FluoroRegistrationLib.simulate.writer import read_truth_mask, simulate_folder

    paths = write_phantom(spine, tmp_path / "ct")
    names = dict(SPINE_LABELS)
    assert is_spine(names) and vertebrae(names) == list(VERTEBRAE)
    camera = Camera(1000.0, 96, 96, 2.4, 2.4)
    simulate_folder(tmp_path / "sim", paths["ct"], paths["labels"], paths["labels_json"], frames=1, seed=1,
                    realism="low", camera=camera)
    ct = load_ct(paths["ct"])
    labels = load_labels(paths["labels"], ct)
    poses = read_poses(tmp_path / "sim" / "poses" / "0000.json")
    assert set(poses) == set(SPINE_LABELS)
    seen = 0
    for v in VERTEBRAE:
        mask = ndimage.binary_dilation(read_truth_mask(tmp_path / "sim", "0000", v).numpy())
        idx = np.argwhere(labels.array == SPINE_LABELS[v])[:, ::-1].astype(float)  # (i, j, k)
        points = idx @ labels.volume_from_index[:3, :3].T + labels.volume_from_index[:3, 3]
        uv = camera.project(transform_points(poses[v], torch.tensor(points))).numpy()
        col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        inside = (col - 47.5) ** 2 + (row - 47.5) ** 2 < 40 ** 2  # the intensifier's round field, less its rim
        if inside.mean() < 0.9:  # (partly) out of the field
            continue
        seen += 1
        # every voxel of the vertebra projects into its mask, and the mask is no larger than its projection
        assert mask[row[inside], col[inside]].mean() > 0.99, v
        footprint = np.zeros((96, 96), bool)
        footprint[row[inside], col[inside]] = True
        assert mask.sum() <= ndimage.binary_dilation(footprint, iterations=2).sum(), v
    assert seen >= 2


def test_the_commands_write_a_spine_and_simulate_it_with_the_spine_s_motion(tmp_path, capsys):
    import json

    from FluoroRegistrationLib.cli import main

    assert main(["phantom", "--anatomy", "spine", "--spacing", "4", "--out", str(tmp_path / "ct")]) == 0
    assert main(["simulate", "--ct", str(tmp_path / "ct" / "ct.nii.gz"), "--labels", str(tmp_path / "ct" / "labels.nii.gz"),
                 "--label-names", str(tmp_path / "ct" / "labels.json"), "--size", "48", "--realism", "low",
                 "--frames", "3", "--out", str(tmp_path / "sim")]) == 0
    frames = json.loads((tmp_path / "sim" / "frames.json").read_text())
    assert all(-15 <= f["flexion_deg"] <= 35 for f in frames.values())
    assert json.loads((tmp_path / "sim" / "simulation.json").read_text())["anatomy"] == "spine"
    assert main(["phantom", "--anatomy", "spine", "--implant", "--out", str(tmp_path / "x")]) == 2
    assert "the knee's" in capsys.readouterr().err
