"""Synthetic data made by tomoseg itself: the tomography phantom and its baselines."""

from tomoseg.synthetic.phantom import PhantomParams, generate_phantom, otsu_baseline

__all__ = ["PhantomParams", "generate_phantom", "otsu_baseline"]
