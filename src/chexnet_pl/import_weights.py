"""Import arnoweng/CheXNet's trained weights (model.pth.tar) as a chexnet_pl checkpoint that
every command reads (14 outputs, this project's class order); the conversion is
``chexnet_pl.models.arnoweng.import_arnoweng``.

  chexnet-import-weights model.pth.tar chexnet_arnoweng.ckpt
  chexnet-evaluate ckpt=chexnet_arnoweng.ckpt data.root=/data/nih

arnoweng/CheXNet's ``model.pth.tar`` holds a DataParallel DenseNet-121 with torchvision's old key
names (``module.densenet121.features.denseblock1.denselayer1.norm.1.weight``) and a 14-way
``classifier.0`` in that project's class order. Keys are remapped and every weight must land —
no ``strict=False`` dropping weights silently (which leaves a random network with AUROC ≈ 0.5).
"""

from __future__ import annotations

import argparse
import logging
import sys

from chexnet_pl.command_runner import LOG_FORMAT, user_errors_exit
from chexnet_pl.models.arnoweng import import_arnoweng


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chexnet-import-weights",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="arnoweng/CheXNet model.pth.tar")
    parser.add_argument(
        "target", help="the .ckpt to write (loads with CheXNetModule.load_from_checkpoint)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    with user_errors_exit():
        import_arnoweng(args.source, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
