"""The fluoroscopy simulator: physics, detector effects, scenes."""
