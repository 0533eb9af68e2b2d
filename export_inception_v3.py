"""Export torchvision's inception_v3 to weights/inception_v3_mlx.npz (see `python export_inception_v3.py --help`).

    python export_inception_v3.py                       # download the ImageNet weights
    python export_inception_v3.py --from-pth model.pth  # convert a local torchvision checkpoint
    python export_inception_v3.py --random-init --seed 0 --out /tmp/inception_v3.npz
"""

import sys

import models  # noqa: F401  (fast BLAS first)
from convert import export_main

if __name__ == "__main__":
    sys.exit(export_main("inception_v3"))
