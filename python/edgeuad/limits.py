"""Bounds on every size-like parameter the runtime accepts, defined once.

The fused-map kernels, the memory bank and the preprocessing allocate and loop in proportion to
these values, so an out-of-range value from a caller or an edited manifest must be an error before
any work starts, not a segfault, an allocation of terabytes or a blur that runs for minutes (a
`sigma` of 6e8 overflowed the kernel radius; 1e6 ran for minutes).  `runtime/maps.py` and
`manifest_schema.py` check against these; the C++ kernels carry their own, equal or wider limits
(cpp/include/edgeuad/maps_pixel.hpp: sigma <= 64, sides <= 16384).
Dependency-free: imported by the bundle reader and the runtime alike.
"""
from __future__ import annotations

# Gaussian blur of the anomaly map, in map pixels.  The kernel radius is int(4*sigma + 0.5): 64
# gives a 513-tap kernel, wider than any useful blur of a map of MAX_MAP_SIDE (PatchCore uses 4).
MAX_SIGMA = 64.0
# Anomaly maps and network inputs: (H, W) sides.  The map is B x H x W float32.
MAX_MAP_SIDE = 8192
MIN_INPUT_SIDE = 8            # the smallest frame validate_frame accepts
MAX_INPUT_SIDE = 4096
# Patch grid of a memory-bank method (embedding rows per frame = grid_h * grid_w).
MAX_GRID_SIDE = 1024
# Eq. 10 neighbourhood of the reweighted patch score (PatchCore: 9); 0 = off.
MAX_REWEIGHT_B = 1024
# Feature-pair levels of a cos_pairs model (ReContrast uses 3); the CUDA kernels take at most 16
# (kMaxLevels in cpp/include/edgeuad/maps_kernels.hpp), so a bundle stays deployable on a Jetson.
MAX_LEVELS = 16
# Worker threads a caller may ask a kernel for (0 = library default).
MAX_THREADS = 1024
# Normalisation constants of the preprocessing (images are scaled to [0, 1] first).
MEAN_RANGE = (0.0, 1.0)
STD_RANGE = (1e-3, 10.0)
# Members of an ensemble bundle (each is a whole bundle, run on every frame).
MAX_ENSEMBLE_MEMBERS = 16
# Robust statistics of an ensemble member's normal scores (raw score units: distances, 1 - cos).
# Beyond these the modified z-score (s - median) / (1.4826 * MAD) loses all precision.
MAX_ABS_MEDIAN = 1e12
MAD_RANGE = (1e-12, 1e12)
# manifest.json is small; anything far larger is not a manifest.
MAX_MANIFEST_BYTES = 16 << 20
