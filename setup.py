"""Everything else is in pyproject.toml. This maps the repository's top-level ``conf/`` into the
package as ``chexnet_pl.conf``, so wheels and non-editable installs carry the Hydra configs.
Each folder of ``conf/`` is listed as a package of its own (``chexnet_pl.conf.data``...):
setuptools warns about every data folder that is not (``BuildBackendWarning``)."""

from pathlib import Path

from setuptools import find_packages, setup

CONF = Path(__file__).resolve().parent / "conf"
CONF_PACKAGES = [
    ".".join(("chexnet_pl.conf", *folder.relative_to(CONF).parts))
    for folder in [CONF, *sorted(p for p in CONF.rglob("*") if p.is_dir())]
    if folder == CONF or any(folder.glob("*.yaml"))
]

setup(
    packages=[*find_packages("src"), *CONF_PACKAGES],
    package_dir={"": "src", "chexnet_pl.conf": "conf"},
    package_data={package: ["*.yaml"] for package in CONF_PACKAGES},
)
