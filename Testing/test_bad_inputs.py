"""Every bad input gets one clear line, a failed registration says so (the corpus of
Testing/bad_inputs.py through `fluororeg`), and the JSON/YAML readers hold under fuzzing: a
FluoroRegError of one line or a correct result, never another exception."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bad_inputs
from FluoroRegistrationLib import FluoroRegError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, bad_inputs.build(root)


def test_every_case_of_the_corpus_is_handled(corpus):
    root, cases = corpus
    assert len(cases) >= 130
    failures = []
    for case in cases:
        bad_inputs.cleanup_outputs(root)
        outcome = bad_inputs.run_in_process(case)
        if outcome.kind != "clean":
            failures.append(f"{outcome.kind}: {case.name}: rc {outcome.code}: {outcome.detail[:200]}")
    assert not failures, "\n".join(failures)


def test_the_judge_tells_the_outcomes_apart():
    error = bad_inputs.Case("x: bad", [], "error", "calibration")
    assert bad_inputs.judge(error, 2, "", "error: calibration x is wrong; fix it\n").kind == "clean"
    assert bad_inputs.judge(error, 2, "", "usage: x\nerror: calibration\n").kind == "message"
    assert bad_inputs.judge(error, 2, "", "error: something else\n").kind == "message"
    assert bad_inputs.judge(error, 0, "done", "").kind == "silent"
    assert bad_inputs.judge(error, "exception", "", "Traceback (most recent call last):\n").kind == "traceback"
    assert bad_inputs.judge(error, 1, "", "error: internal error\n").kind == "traceback"
    assert bad_inputs.judge(error, -9, "", "").kind == "crash"
    flag = bad_inputs.Case("x: off", [], "flag")
    assert bad_inputs.judge(flag, 3, "femur: failed", "error: every bone failed\n").kind == "clean"
    assert bad_inputs.judge(flag, 0, "femur: check, similarity 0.2", "").kind == "clean"
    assert bad_inputs.judge(flag, 0, "femur: ok, similarity 0.8", "").kind == "silent"
    good = bad_inputs.Case("x: good", [], "ok")
    assert bad_inputs.judge(good, 0, "femur: ok", "warning: spacing\n").kind == "clean"
    assert bad_inputs.judge(good, 3, "femur: failed", "error: every bone failed\n").kind == "wrong"


# ------------------------------------------------------------------------------------ fuzzing
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=5)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=20)
NUMBERS = st.one_of(st.integers(-10**5, 10**5), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                    st.none(), st.booleans(), st.lists(st.integers(), max_size=3))
FUZZ = settings()  # the profile conftest.py loads: 150 examples, derandomized; HYPOTHESIS_PROFILE=slow: 3000


def _one_line_or_value(read, value):
    """``read(value)`` returns, or raises a one-line FluoroRegError; anything else fails the test."""
    try:
        return read(value)
    except FluoroRegError as err:
        assert "\n" not in str(err) and str(err)
        return None


@FUZZ
@given(st.fixed_dictionaries({}, optional={
    "sdd_mm": NUMBERS, "rows": NUMBERS, "cols": NUMBERS, "row_spacing_mm": NUMBERS, "col_spacing_mm": NUMBERS,
    "principal_point": st.one_of(JSON, st.fixed_dictionaries({}, optional={"col": NUMBERS, "row": NUMBERS})),
    "distortion": st.one_of(JSON, st.fixed_dictionaries({}, optional={"model": JSON, "k": NUMBERS}))}))
def test_fuzz_calibration(data):
    from FluoroRegistrationLib.geometry import Camera

    camera = _one_line_or_value(lambda d: Camera.from_dict(d, "calibration"), data)
    if camera is not None:  # a result is a physical C-arm
        assert 300 <= camera.sdd_mm <= 3000 and 8 <= camera.rows <= 16384 and -camera.cols <= camera.u0 <= 2 * camera.cols
        assert abs(camera.distortion_k) <= 0.5


@FUZZ
@given(JSON)
def test_fuzz_calibration_any_json(tmp_path_factory, data):
    from FluoroRegistrationLib.geometry import Camera

    path = tmp_path_factory.mktemp("cal") / "calib.json"
    path.write_text(json.dumps(data))
    _one_line_or_value(Camera.from_json, path)


@FUZZ
@given(st.one_of(JSON, st.dictionaries(st.text(max_size=6), st.fixed_dictionaries(
    {"camera_from_volume": st.one_of(JSON, st.lists(st.lists(NUMBERS, min_size=4, max_size=4), min_size=4,
                                                           max_size=4))}), max_size=3)))
def test_fuzz_poses(tmp_path_factory, data):
    from FluoroRegistrationLib.files import read_poses

    path = tmp_path_factory.mktemp("poses") / "poses.json"
    path.write_text(json.dumps(data))
    poses = _one_line_or_value(read_poses, path)
    for pose in (poses or {}).values():  # a result is rigid
        assert pose.shape == (4, 4) and math.isclose(float(pose[:3, :3].det()), 1.0, abs_tol=1e-3)


@FUZZ
@given(st.one_of(JSON, st.dictionaries(st.text(max_size=6), NUMBERS, max_size=4), st.text(max_size=20)))
def test_fuzz_label_names(tmp_path_factory, data):
    from FluoroRegistrationLib.volume import read_label_names

    if isinstance(data, str):
        names = _one_line_or_value(read_label_names, data)  # the femur=1,tibia=2 form
    else:
        path = tmp_path_factory.mktemp("names") / "labels.json"
        path.write_text(json.dumps(data))
        names = _one_line_or_value(read_label_names, path)
    for name, label in (names or {}).items():  # a result maps names to whole ids >= 1
        assert isinstance(name, str) and isinstance(label, int) and label >= 1


STAGES = ("search", "ranking", "pyramid", "steps", "depth_scan", "tilt_probe", "axial_probe", "masks", "checks")


@FUZZ
@given(st.dictionaries(st.sampled_from(STAGES + ("similarity", "seed", "device", "other")),
                       st.one_of(JSON, st.dictionaries(st.text(max_size=12) | st.sampled_from(
                           ("enabled", "range_mm", "pixel_mm", "iterations", "learning_rate", "patience", "retries", "starts", "level",
                            "points", "step_deg", "range_deg", "dilation_mm", "fail_similarity")), NUMBERS,
                           max_size=3)), max_size=4))
def test_fuzz_registration_config(data):
    from FluoroRegistrationLib.register import RegistrationConfig

    _one_line_or_value(RegistrationConfig.from_dict, data)


@FUZZ
@given(st.dictionaries(st.sampled_from(("name", "seed", "frames", "calibration", "bones", "starts", "conditions",
                                        "options", "landscape", "threads_per_task", "other")), JSON, max_size=5))
def test_fuzz_experiment_config(data):
    from FluoroRegistrationLib.evaluate.config import experiment_from_dict

    data.setdefault("frames", {"folder": "frames"})
    _one_line_or_value(experiment_from_dict, data)


@FUZZ
@given(JSON)
def test_fuzz_model_description(tmp_path_factory, data):
    from FluoroRegistrationLib.segment.model import read_model_info

    path = tmp_path_factory.mktemp("model") / "model.json"
    path.write_text(json.dumps(data))
    _one_line_or_value(read_model_info, path)


def test_an_error_during_a_progress_bar_starts_its_own_line(monkeypatch, capsys):
    """A failure while a progress bar is drawn is printed on a line of its own, not glued to the bar."""
    from tqdm import tqdm

    import FluoroRegistrationLib.cli as cli

    def failing(args):
        bar = tqdm(total=10, desc="register")
        bar.update(3)
        raise FluoroRegError("the frame went away; check the file")

    monkeypatch.setattr(cli, "cmd_phantom", failing)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["phantom"].set_defaults(func=failing)
    assert cli.main(["phantom", "--out", str(__import__("tempfile").mkdtemp())]) == 2
    err = capsys.readouterr().err
    assert "\nerror: the frame went away; check the file\n" in err or err.startswith("error:")
    assert not any(line.startswith("register") and "error:" in line for line in err.replace("\r", "\n").splitlines())


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return bad_inputs.make_scene(tmp_path_factory.mktemp("api"))


API_CASES = {  # register_frame's arguments, one wrong at a time -> words of the one-line error
    "initial_poses": ([[1, 0, 0, 0]], "initial poses must be"),
    "bones": (3, "bones must be bone names"),
    "ct": (np.ones((10, 10, 10)), "ct must be a volume file path or an ImageVolume"),
    "labels": (None, "labels must be a volume file path"),
    "masks": ({"femur": 5}, "a single value (5)"),
    "frame": ([[1, 2], [3, 4]], "frame must be a file path"),
    "calibration": ([1, 2], "calibration must be a Camera"),
    "config": ("fast", "config must be a RegistrationConfig"),
    "polarity": ("x", "unknown polarity"),
    "index": ("1", "must be a whole number"),
}


@pytest.mark.parametrize("argument", sorted(API_CASES))
def test_the_python_api_refuses_bad_arguments_in_one_line(scene, argument):
    from FluoroRegistrationLib import register_frame

    value, words = API_CASES[argument]
    kwargs = dict(ct=scene["ct"], labels=scene["labels"], frame=scene["frame"], calibration=scene["calib"],
                  initial_poses=scene["init"], bones=["femur"], config=bad_inputs.QUICK)
    kwargs[argument] = value
    with pytest.raises(FluoroRegError) as err:
        register_frame(**kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)
