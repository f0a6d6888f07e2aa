"""sandboxd: run untrusted code in warm Linux-namespace sandboxes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sandboxd")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"
