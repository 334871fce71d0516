"""Tracking bones through fluoroscopy sequences: ``track_sequence`` (the one tracking path), per-frame
confidence, resumable chunks on Dask, knee kinematics out. See docs/CONVENTIONS.md, "Tracking"."""

from .api import TrackResult, read_starts, track_sequence
from .confidence import TrackChecks
from .sequence import FrameSequence
from .tracker import TRACK_REFINE, TrackConfig

__all__ = ["FrameSequence", "TRACK_REFINE", "TrackChecks", "TrackConfig", "TrackResult", "read_starts", "track_sequence"]
