"""Scoring predictions against truth (folders or arrays) and measuring 3D objects.

No torch here, so scoring and object measurement start in well under a second."""
