"""The Hydra configs, installed as the package ``chexnet_pl.conf`` (``pkg://chexnet_pl.conf``)."""
