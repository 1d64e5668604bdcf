"""Synthetic data made by tomoseg itself: the tomography phantom and its baselines."""
