"""Bone segmentation of fluoroscopy frames: DeepLabv3 trained on frames simulated from the CT."""

from .metrics import dice, hd95
from .model import ARCHITECTURES, BoneSegmenter, ModelInfo, load_model, preprocess, save_model
from .predict import overlay_image, predict_files, predict_masks, predict_probabilities
from .train import TrainOptions, train_segmenter

__all__ = ["ARCHITECTURES", "BoneSegmenter", "ModelInfo", "TrainOptions", "dice", "hd95", "load_model",
           "overlay_image", "predict_files", "predict_masks", "predict_probabilities", "preprocess", "save_model",
           "train_segmenter"]
