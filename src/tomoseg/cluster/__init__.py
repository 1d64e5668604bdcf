"""Running tomoseg on clusters: Slurm / PBS job scripts and the Ray backends' shared helpers."""
