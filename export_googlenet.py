"""Export a GoogLeNet to weights/<model>_mlx.npz (see `python export_googlenet.py --help`).

torchvision's googlenet (the default), or one of the 2015 Caffe models: bvlc_googlenet,
googlenet_places205, googlenet_places365 (docs/caffe-models.md).

    python export_googlenet.py                       # download torchvision's ImageNet weights
    python export_googlenet.py --from-pth model.pth  # convert a local torchvision checkpoint
    python export_googlenet.py --random-init --seed 0 --out /tmp/googlenet.npz
    python export_googlenet.py --model bvlc_googlenet                  # download the BVLC caffemodel
    python export_googlenet.py --model bvlc_googlenet --from-caffemodel bvlc_googlenet.caffemodel
    python export_googlenet.py --model googlenet_places365 --from-pth googlenet_places365.pth  # neural-dream's
"""

import sys

import models  # noqa: F401  (fast BLAS first)
from convert import export_main

if __name__ == "__main__":
    sys.exit(export_main(argv=None, choices=["googlenet", "bvlc_googlenet", "googlenet_places205",
                                             "googlenet_places365"]))
