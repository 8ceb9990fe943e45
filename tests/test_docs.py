"""The documentation site builds strictly (a broken link, anchor or API reference fails), and
holds every page. Its code blocks and output lists are run by tests/test_readme.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

DOCS = REPO / "docs"


def nav_pages(nav: list) -> set[str]:
    """The Markdown files mkdocs.yml's nav names, at any depth."""
    pages = set()
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages |= nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_page_is_in_the_navigation_and_every_entry_exists():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = nav_pages(config["nav"])
    on_disk = {p.name for p in DOCS.glob("*.md")}
    assert listed - on_disk == set(), "nav names pages that do not exist"
    assert on_disk - listed == set(), "pages missing from mkdocs.yml's nav"


def test_the_api_page_renders_every_public_name():
    """Each public name of ``chexnet_pl`` is rendered from the module that defines it."""
    import chexnet_pl

    rendered = set(re.findall(r"^::: ([\w.]+)$", (DOCS / "api.md").read_text(encoding="utf-8"),
                              re.M))  # fmt: skip
    for name, (module, _) in chexnet_pl._LAZY.items():
        assert module in rendered, f"chexnet_pl.{name} ({module}) is not on docs/api.md"


def test_images_the_pages_show_are_committed_and_small():
    for page in [REPO / "README.md", *DOCS.glob("*.md")]:
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text(encoding="utf-8")):
            path = (page.parent / image).resolve()
            assert path.is_file(), f"{page.name} shows {image}, which is not there"
            assert path.stat().st_size < 400_000, f"{image} is {path.stat().st_size} bytes"


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "load_run" in api  # mkdocstrings rendered the docstrings
    assert (tmp_path / "site" / "images" / "sample.png").is_file()
