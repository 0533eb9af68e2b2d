"""The gallery pages' shared checks: each page parsed as a browser parses it (html5lib implements the
HTML standard's parsing algorithm), and every image, link and anchor it names checked on disk,
following links from page to page; plus headless Chromium, where it is installed."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.etree.ElementTree import Element

import html5lib
import pytest


@dataclass
class Page:
    path: Path
    root: Element
    images: list[Element] = field(default_factory=list)     # <img>
    links: list[Element] = field(default_factory=list)      # <a href>
    sources: list[Element] = field(default_factory=list)    # <source src> of <video>s

    @property
    def ids(self) -> set[str]:
        return {e.get("id") for e in self.root.iter() if e.get("id")}

    def text(self, tag: str) -> list[str]:
        return ["".join(e.itertext()) for e in self.root.iter(tag)]

    def cells(self) -> list[Element]:
        """The thumbnails' grid cells (<li> of <ul class="grid">), in page order."""
        return [li for ul in self.root.iter("ul") if ul.get("class") == "grid" for li in ul.iter("li")]

    def labels(self) -> list[str]:
        """Each cell's caption (its second link; the first is the thumbnail)."""
        return [li.findall("a")[1].text for li in self.cells()]


def read_page(path: Path) -> Page:
    root = html5lib.parse(path.read_bytes(), treebuilder="etree", namespaceHTMLElements=False)
    page = Page(path, root)
    page.images = list(root.iter("img"))
    page.links = [a for a in root.iter("a") if a.get("href") is not None]
    page.sources = list(root.iter("source"))
    return page


def local_target(page: Path, url: str) -> tuple[Path | None, str]:
    """(the file a relative URL names, its #fragment); (None, fragment) for a link within the page."""
    parts = urlsplit(url)
    assert not parts.scheme and not parts.netloc, f"{page}: '{url}' is not a local file (the page must open from disk)"
    if not parts.path:
        return None, parts.fragment
    return (page.parent / unquote(parts.path)).resolve(), parts.fragment


def check_site(index: Path) -> dict[Path, Page]:
    """Parse ``index`` and every page it links to (and so on); assert that each image, video source,
    link and #anchor named exists. Returns the pages read, by path."""
    pages: dict[Path, Page] = {}
    queue = [index.resolve()]
    while queue:
        path = queue.pop()
        if path in pages:
            continue
        page = pages[path] = read_page(path)
        for img in page.images:
            target, _ = local_target(path, img.get("src", ""))
            assert target is not None and target.is_file(), f"{path}: image {img.get('src')} is missing"
        for sheet in (e for e in page.root.iter("link") if e.get("rel") == "stylesheet"):
            target, _ = local_target(path, sheet.get("href", ""))
            assert target is not None and target.is_file(), f"{path}: stylesheet {sheet.get('href')} is missing"
        for source in page.sources:
            target, _ = local_target(path, source.get("src", ""))
            assert target is not None and target.is_file(), f"{path}: video {source.get('src')} is missing"
        for a in page.links:
            target, fragment = local_target(path, a.get("href"))
            target = target or path
            assert target.is_file(), f"{path}: link {a.get('href')} leads nowhere"
            if target.suffix == ".html":
                queue.append(target)
                if fragment:
                    assert fragment in read_page(target).ids, f"{path}: no #{fragment} in {target}"
    return pages


def chromium_driver():
    """A headless Chromium driven by selenium, or a skip naming what is missing."""
    selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (.ci/run does where apt-get works)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1600", "--hide-scrollbars"):
        options.add_argument(flag)
    assert selenium.__version__
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))
