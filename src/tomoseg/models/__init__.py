"""Segmentation networks: a registry of architectures (:mod:`tomoseg.models.registry`), one file
per network (``segnet``, ``unet``), shared layers (``layers``: the any-size padding wrapper)."""
