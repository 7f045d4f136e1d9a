"""cri-shim against containerd side by side: `python -m bench.compare` (make bench / make bench-smoke)."""
