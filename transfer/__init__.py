"""Downstream side of the suite: the transfer tasks (classification, detection, segmentation), the
encoders they start from, their metrics and records."""
