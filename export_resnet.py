#!/usr/bin/env python3
"""Export torchvision's ResNet50 ImageNet weights to weights/resnet50_mlx.npz.

    python export_resnet.py                              # download from torchvision
    python export_resnet.py --from-pth resnet50-0676ba61.pth
    python export_resnet.py --random-init --seed 0 --out /tmp/resnet50.npz
"""

import sys

import models  # noqa: F401  (fast BLAS before anything imports mlx)
from convert import export_main

if __name__ == "__main__":
    sys.exit(export_main("resnet50"))
