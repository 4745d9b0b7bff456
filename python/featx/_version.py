"""featx's version, from the installed distribution's metadata (no other import)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("featx")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"
