"""Human-readable outputs: overlays, panels, tables, training curves."""
