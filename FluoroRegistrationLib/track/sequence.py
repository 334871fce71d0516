"""A fluoroscopy sequence as numbered frames with times: a folder of frame files, one stack file
(multi-page TIFF, multi-frame DICOM with its frame time, an (N, H, W) .npy) or a video (PyAV).

    seq = FrameSequence.open("squat.dcm")        # or a folder, a .tif, a .npy, an .mp4
    seq.count, seq.time_ms(10), seq.read(10)     # (H, W) float64, the file's values

A frame that cannot be read raises its one-line FluoroRegError when asked for; the tracker records
it by index and goes on (docs/CONVENTIONS.md, "Sequences").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FluoroRegError

FRAME_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".dicom", ".npy", ".jpg", ".jpeg", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg")
DEFAULT_FPS = 30.0


@dataclass
class FrameSequence:
    """``files``: one path per frame (a folder) or one stack file; ``times_ms``: per frame."""

    source: Path
    files: list
    stack: bool
    times_ms: np.ndarray
    _decoded: list | None = None  # a video's frames, decoded once on the first read (uint16)

    @classmethod
    def open(cls, path, fps: float | None = None) -> "FrameSequence":
        """Frames of a folder (files sorted by name), a stack file or a video; times from the DICOM
        frame time (or the video's), else ``fps`` (default 30)."""
        from ..frame_files import frame_count

        path = Path(path)
        if fps is not None and not (0 < fps <= 10000):
            raise FluoroRegError(f"--fps {fps} must be a positive frame rate (frames per second)")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
            if not files:
                raise FluoroRegError(f"no frame files in {path}; put PNG, TIFF, DICOM or .npy frames there")
            return cls(path, files, False, _times(len(files), fps))
        if not path.is_file():
            raise FluoroRegError(f"sequence {path} not found; give a folder of frames, a stack file or a video")
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return _video(path, fps)
        count = frame_count(path)
        times = _dicom_times(path, count) if fps is None else None
        return cls(path, [path], True, times if times is not None else _times(count, fps))

    @property
    def count(self) -> int:
        return len(self.times_ms)

    def time_ms(self, index: int) -> float:
        return float(self.times_ms[index])

    def read(self, index: int) -> np.ndarray:
        """(H, W) float64 values of frame ``index``."""
        from ..frame_files import read_frame_array

        if not 0 <= index < self.count:
            raise FluoroRegError(f"frame {index} does not exist; the sequence has {self.count} frames")
        if self.source.suffix.lower() in VIDEO_SUFFIXES:
            if self._decoded is None:
                self._decoded = _video_frames(self.source)
            return self._decoded[index].astype(np.float64)
        return read_frame_array(self.files[0], index) if self.stack else read_frame_array(self.files[index])

    def name(self, index: int) -> str:
        return self.files[index].name if not self.stack else f"{self.source.name}[{index}]"

    def stem(self, index: int) -> str:
        """How files belonging to frame ``index`` are named: its file's stem, or NNNN in a stack."""
        return self.files[index].stem if not self.stack else f"{index:04d}"


def _times(count: int, fps: float | None) -> np.ndarray:
    return np.arange(count, dtype=np.float64) * 1000.0 / (fps or DEFAULT_FPS)


def _dicom_times(path: Path, count: int):
    """Frame times (ms) of a multi-frame DICOM: Frame Time Vector or Frame Time (or Cine Rate)."""
    from ..frame_files import _dicom_header, _is_dicom

    if not _is_dicom(path):
        return None
    ds = _dicom_header(path)
    vector = ds.get("FrameTimeVector")
    if vector is not None and len(vector) == count:
        return np.cumsum(np.asarray(vector, np.float64)) - float(vector[0])  # first entry is 0 by the standard
    frame_time = ds.get("FrameTime")
    if frame_time is None and ds.get("CineRate"):
        frame_time = 1000.0 / float(ds.CineRate)
    if frame_time is None:
        return None
    if not float(frame_time) > 0:
        raise FluoroRegError(f"{path.name}: Frame Time {frame_time} ms is not positive; pass --fps")
    return np.arange(count, dtype=np.float64) * float(frame_time)


def _video(path: Path, fps: float | None) -> FrameSequence:
    av = _av()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            times = [float(f.time) * 1000.0 for f in container.decode(stream)]
    except av.error.FFmpegError as err:
        raise FluoroRegError(f"cannot read video {path.name} ({err}); re-export it (e.g. H.264 .mp4)") from None
    if not times:
        raise FluoroRegError(f"video {path.name} has no frames")
    times = np.asarray(times) - times[0] if fps is None else _times(len(times), fps)
    return FrameSequence(path, [path], True, times)


def _video_frames(path: Path) -> list:
    """Every frame of a video as (H, W) uint16 grey levels (decoding is sequential: once)."""
    av = _av()
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="gray16le") for f in container.decode(container.streams.video[0])]


def _av():
    try:
        import av
    except ModuleNotFoundError:
        raise FluoroRegError("reading a video needs PyAV: pip install av (or the project's [video] extra); "
                             "or export the frames as PNG/TIFF into a folder") from None
    return av
