"""Export torchvision's googlenet to weights/googlenet_mlx.npz (see `python export_googlenet.py --help`).

    python export_googlenet.py                       # download the ImageNet weights
    python export_googlenet.py --from-pth model.pth  # convert a local torchvision checkpoint
    python export_googlenet.py --random-init --seed 0 --out /tmp/googlenet.npz
"""

import sys

import models  # noqa: F401  (fast BLAS first)
from convert import export_main

if __name__ == "__main__":
    sys.exit(export_main("googlenet"))
