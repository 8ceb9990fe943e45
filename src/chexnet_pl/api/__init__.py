"""The public Python API (``chexnet_pl.load``, ``chexnet_pl.evaluate``, ``chexnet_pl.train``,
``chexnet_pl.overlay``), built on the same internals as the commands. Reach it through the
package: ``import chexnet_pl`` imports none of it until a name is used."""
