"""Everything else is in pyproject.toml. This maps the repository's top-level ``conf/`` into the
package as ``chexnet_pl.conf``, so wheels and non-editable installs carry the Hydra configs."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages("src"), "chexnet_pl.conf"],
    package_dir={"": "src", "chexnet_pl.conf": "conf"},
)
