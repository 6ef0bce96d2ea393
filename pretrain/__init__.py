"""Pretext side of the suite: backbones, masks, pretext methods and the pretraining loop."""
