"""tomoseg: segment very large grayscale scientific images with CNNs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tomoseg")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
