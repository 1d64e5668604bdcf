"""Experiments built from training runs: the crop-size x crop-count sweep and the demo."""
