"""Downstream side of the suite: VOC data, transfer tasks and their metrics."""
