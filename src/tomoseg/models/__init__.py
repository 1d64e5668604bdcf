"""Segmentation networks: a registry of architectures, one file per network."""
