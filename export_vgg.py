#!/usr/bin/env python3
"""Export torchvision's VGG16 / VGG19 ImageNet weights to weights/vgg16_mlx.npz / vgg19_mlx.npz.

    python export_vgg.py --model vgg19                   # download from torchvision
    python export_vgg.py --model vgg16 --from-pth vgg16-397923af.pth
    python export_vgg.py --model vgg16 --random-init --seed 0 --out /tmp/vgg16.npz
"""

import sys

import models  # noqa: F401  (fast BLAS before anything imports mlx)
from convert import export_main

if __name__ == "__main__":
    sys.exit(export_main(choices=["vgg16", "vgg19"]))
