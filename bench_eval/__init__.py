"""Evaluation of inpainting: fills of trained networks and classical baselines, scored over the hole."""
