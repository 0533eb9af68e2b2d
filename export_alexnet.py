#!/usr/bin/env python3
"""Export torchvision's AlexNet ImageNet weights to weights/alexnet_mlx.npz.

    python export_alexnet.py                             # download from torchvision
    python export_alexnet.py --from-pth alexnet-owt-7be5be79.pth
    python export_alexnet.py --random-init --seed 0 --out /tmp/alexnet.npz
"""

import sys

import models  # noqa: F401  (fast BLAS before anything imports mlx)
from convert import export_main

if __name__ == "__main__":
    sys.exit(export_main("alexnet"))
