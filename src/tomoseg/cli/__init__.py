"""The ``tomoseg`` command line (typer + rich), a thin layer over the Python API."""

from tomoseg.cli.app import app, main

__all__ = ["app", "main"]
