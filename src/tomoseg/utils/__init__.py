"""Small helpers used by every layer (no tomoseg imports, no torch)."""
