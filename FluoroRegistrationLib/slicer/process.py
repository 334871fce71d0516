"""Registration in a child process, followed without threads.

Slicer's Qt loop does not release Python's GIL to other Python threads while it idles, so a worker
thread would run only in the gaps of the GUI (issue 19); SlicerTotalSegmentator runs its work in a
separate process for the same reason. :class:`RegistrationProcess` writes the inputs to a folder,
runs ``fluororeg register`` on them (the one registration path) in a child Python, and the GUI
polls it from a timer: :meth:`~RegistrationProcess.poll` reads the progress lines the child appended
to a file since the last call (no pipe can block), :meth:`~RegistrationProcess.cancel` ends the child,
:meth:`~RegistrationProcess.result` reads its result file (or raises its one-line error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..errors import FluoroRegError
from ..files import write_poses
from ..volume import ImageVolume, write_image


class RegistrationProcess:
    """``fluororeg register`` running in a child process on the files in ``folder``.

    Made by the scene logic's ``startRegistrationProcess`` on the inputs :func:`write_inputs` wrote;
    call :meth:`poll` (progress events: dicts with stage, iteration, similarity and the (4, 4) pose as
    nested lists) until :attr:`running` is False, and
    :meth:`result` for the result file's contents ({bone: {camera_from_volume, status, ...}}).
    """

    def __init__(self, folder: Path, argv: list, python: str | None = None):
        self.folder = Path(folder)
        self.progress_path = self.folder / "progress.jsonl"
        self.out_path = self.folder / "result.json"
        self.progress_path.write_text("")
        self._offset, self._partial, self.cancelled = 0, "", False
        self._stderr = open(self.folder / "stderr.txt", "w")  # noqa: SIM115 (closed when the child ends)
        command = [python or sys.executable, "-m", "FluoroRegistrationLib.cli", "register", *map(str, argv),
                   "--progress-file", str(self.progress_path), "--out", str(self.out_path)]
        # the child imports this very FluoroRegistrationLib, wherever Slicer (or a checkout) keeps it
        core_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [core_parent, os.environ.get("PYTHONPATH")])))
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                            cwd=str(self.folder), env=env)
        except OSError as err:
            self._stderr.close()
            raise FluoroRegError(f"cannot start the registration process with {command[0]} ({err.strerror}); "
                                 "check Slicer's Python (PythonSlicer)") from None

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def poll(self) -> list[dict]:
        """The progress events the child wrote since the last call (whole lines only)."""
        with open(self.progress_path) as f:
            f.seek(self._offset)
            text = f.read()
            self._offset = f.tell()
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next call
        return [json.loads(line) for line in lines if line.strip()]

    def cancel(self) -> None:
        """End the child (its partial work is dropped); :meth:`result` then raises ``cancelled``."""
        self.cancelled = True
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout=timeout)
        self._stderr.close()
        return code

    def remove_files(self) -> None:
        """Delete the folder of inputs (a copy of the CT) once the result has been read."""
        import shutil

        if self.running:
            self.cancel()
        shutil.rmtree(self.folder, ignore_errors=True)

    def result(self) -> dict:
        """The result file ({bone: {camera_from_volume, status, reason, similarity, ...}}) once the child
        has ended; a refused input or a failure raises its one-line message."""
        code = self.wait()
        if self.cancelled:
            raise FluoroRegError("registration cancelled")
        if code in (0, 3) and self.out_path.is_file():  # 3: every bone failed its checks, the result is written
            return json.loads(self.out_path.read_text())
        lines = [line for line in (self.folder / "stderr.txt").read_text().splitlines() if line.startswith("error:")]
        raise FluoroRegError(lines[-1].removeprefix("error: ") if lines else
                             f"the registration process ended with status {code}; see {self.folder / 'stderr.txt'}")


def write_inputs(folder, ct: ImageVolume, labels: ImageVolume, label_ids: dict, frame, calibration: dict,
                 initial_poses: dict, masks=None, config: dict | None = None, polarity: str = "auto") -> list:
    """Write a registration's inputs into ``folder``: CT and labels as NIfTI, the frame (H, W) and an
    optional label map of masks (H, W) as .npy, calibration, starts and settings as JSON. Returns the
    arguments of ``fluororeg register`` that read them (without --out). A rig (``calibration`` with
    ``views``): ``frame`` and ``masks`` are lists, one (H, W) array (or None for masks) per view."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [v.get("name", chr(ord("A") + k)) for k, v in enumerate(calibration["views"])] if "views" in calibration \
        else None
    frames = list(frame) if names else [frame]
    mask_list = (list(masks) if masks is not None else [None] * len(frames)) if names else [masks]
    argv = []
    if label_ids:  # none: implant components only (their --implant arguments are the caller's)
        write_image(ct, folder / "ct.nii.gz")
        write_image(ImageVolume(labels.array.astype(np.int16), labels.volume_from_index), folder / "labels.nii.gz")
        (folder / "labels.json").write_text(json.dumps({b: int(i) for b, i in label_ids.items()}))
        argv = ["--ct", folder / "ct.nii.gz", "--labels", folder / "labels.nii.gz", "--label-names",
                folder / "labels.json", "--bone", ",".join(label_ids)]
    (folder / "calib.json").write_text(json.dumps(calibration))
    write_poses(folder / "init.json", initial_poses)
    argv += ["--calib", folder / "calib.json", "--init", folder / "init.json", "--polarity", polarity]
    for k, (image, mask) in enumerate(zip(frames, mask_list)):
        suffix = f"_{names[k]}" if names else ""
        np.save(folder / f"frame{suffix}.npy", np.asarray(image, dtype=np.float32))
        argv += ["--frame", folder / f"frame{suffix}.npy"]
        if mask is not None:
            np.save(folder / f"masks{suffix}.npy", np.asarray(mask, dtype=np.int16))
            argv += ["--mask", f"{names[k]}:{folder / f'masks{suffix}.npy'}" if names else folder / "masks.npy"]
    if config:
        (folder / "config.json").write_text(json.dumps(config))
        argv += ["--config", folder / "config.json"]
    return argv
