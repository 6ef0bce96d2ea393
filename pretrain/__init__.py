"""Pretext side of the suite: backbones, networks, losses, pretext methods, the probe and the
pretraining entry point."""
