"""The web face measured as a person uses it, beside the command line on the same inputs.

    python benchmarks/gui.py [--repeats 3]

Starts `fluororeg gui` (the built-in phantom), opens it in headless Debian Chromium (Playwright) and
measures: the page's load time; pictures per second while a slider is driven from the keyboard at
25 and 50 events per second (counted in the browser); Register, click to result, on the phantom
frame. Then runs `fluororeg register` in a fresh process on the very files the page's Register
wrote (the same CT, labels, frame, calibration and starts) and times it the same way (wall time of
the command). Prints one table (markdown).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def serve() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "FluoroRegistrationLib.cli", "gui", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2)
            return server, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("fluororeg gui did not start")


def slider_rate(page, per_second: int, events: int = 60) -> tuple[float, float]:
    """(pictures per second, key events per second delivered): the keys are pressed on a fixed
    schedule, so the time a press itself takes does not lower the input rate below ``per_second``
    (unless a press takes longer than the interval)."""
    page.locator(".v-input:has(input[name='pose-rz']) .v-slider-thumb").focus()
    page.evaluate("() => { window.__t = []; new MutationObserver(() => window.__t.push(performance.now()))"
                  ".observe(document.querySelector('#overlay'), {attributes: true, attributeFilter: ['src']}); }")
    t0 = time.perf_counter()
    for i in range(events):
        page.keyboard.press("ArrowRight" if i < events // 2 else "ArrowLeft")  # back where it began
        time.sleep(max(0.0, t0 + (i + 1) / per_second - time.perf_counter()))
    elapsed = time.perf_counter() - t0
    page.wait_for_timeout(800)
    return len(page.evaluate("window.__t")) / elapsed, events / elapsed


def page_register(page) -> float:
    """Click to result, from the same start every time (the slider tests end where they began), once
    the server is idle (it does one thing at a time: a queued click would count the work before it)."""
    page.wait_for_timeout(1500)
    t0 = time.perf_counter()
    page.locator("#register").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Registering')"
                           " || document.querySelector('#status').innerText.includes('similarity')", timeout=60000)
    page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Done')"
                           " && !document.querySelector('#register').disabled", timeout=600000)
    return time.perf_counter() - t0


def cli_register(folder: Path) -> float:
    """`fluororeg register` on the files the page's Register writes (same argv, fresh process)."""
    import slicer

    from FluoroRegistrationLib.slicer.web_session import WebSession

    session = WebSession(slicer.vtkMRMLScene())
    session.load_phantom()
    argv = session.logic.writeRegistrationInputs(folder, session.ct, session.labels, session.frame, session.camera,
                                                 session.bone_ids(), session.start_poses)
    argv = [sys.executable, "-m", "FluoroRegistrationLib.cli", "register", *map(str, argv), "--out",
            str(folder / "result.json")]
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    server, url = serve()
    rows = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            loads, r25, r50, regs, in25, in50 = [], [], [], [], [], []
            for _ in range(args.repeats):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                t0 = time.perf_counter()
                page.goto(url)
                page.wait_for_selector("#overlay[src^='data:image']", timeout=60000)
                loads.append(time.perf_counter() - t0)
                for rates, inputs, per_second in ((r25, in25, 25), (r50, in50, 50)):
                    pictures, delivered = slider_rate(page, per_second)
                    rates.append(pictures)
                    inputs.append(delivered)
                regs.append(page_register(page))
                page.close()
            browser.close()
    finally:
        server.terminate()
    clis = [cli_register(Path(tempfile.mkdtemp(prefix="fluororeg-bench-"))) for _ in range(args.repeats)]
    rows = {"page load (s)": loads, "pictures/s, slider at 25 events/s": r25, "key events/s delivered, 25 asked": in25,
            "pictures/s, slider at 50 events/s": r50, "key events/s delivered, 50 asked": in50,
            "Register in the page, click to result (s)": regs, "fluororeg register, same files (s)": clis}
    print("| measure | median | all |\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    ratio = statistics.median(regs) / statistics.median(clis)
    print(f"\npage / command line: {ratio:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
