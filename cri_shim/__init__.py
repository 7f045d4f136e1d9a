"""cri-shim: a Kubernetes container runtime (CRI v1) written in Python."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cri-shim")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

RUNTIME_NAME = "cri-shim"
CRI_API_VERSION = "v1"
