"""A static web page of what a job made: the atlas of a network, a sweep, every model's dream of
one input (or of several, one row each), a video's poster frame.

The caller describes what was made (``Gallery``: sections of ``Picture``s, each with its label,
its image file and the command that remakes it, optionally beside the input it came
from); ``write_gallery`` turns that into files and knows nothing of how the images were made.

What it writes, for ``<folder>/<name>.html`` (``index.html`` by default):

- the page: one section per ``Section``, a grid of thumbnails, each a link to its picture's page;
- ``<name>_files/thumbs/``: one small JPEG per picture (made again only when its image is newer),
  so that a page of thousands of images stays light; every ``<img>`` has its width and height and
  ``loading="lazy"``, so the browser lays the page out at once and fetches what comes into view;
- ``<name>_files/<image path>.html``: one page per picture: the image at full size, its details,
  the command that remakes it, and links to the previous and next pictures;
- ``<name>_files/style.css``: the look of them all (each page reads well without it too).

Plain HTML and CSS, no script: it opens from disk in any browser, with no server. Links are
relative, so the folder can be moved or published as it is.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from models.weights import atomic_write

from .image_io import ImageError, flatten_alpha

#: The longest side of a thumbnail, in pixels (and in CSS pixels on the page).
THUMB_SIZE = 128
THUMB_QUALITY = 85
PAGE_NAME = "index"
#: Extensions a browser plays in a <video> element; any other video gets its poster and a link.
PLAYABLE = {".mp4": "video/mp4", ".webm": "video/webm"}


@dataclass(frozen=True)
class Picture:
    """One image the job made (or its input), as the page shows it."""

    label: str                                     # the caption under its thumbnail
    path: Path                                     # the image file, at full size
    title: str = ""                                # its page's heading (default: the label)
    command: str | None = None                     # the command that remakes it
    details: tuple[tuple[str, str], ...] = ()      # (name, value) rows on its page
    video: Path | None = None                      # the video this image is the poster frame of
    command_note: str = ""                         # what else that command makes (a render's whole batch)

    @property
    def heading(self) -> str:
        return self.title or self.label


@dataclass(frozen=True)
class Section:
    """A heading and its pictures; with ``source``, the input they were made from comes first."""

    title: str
    pictures: tuple[Picture, ...]
    note: str = ""                                 # beside the heading, e.g. "40 channels"
    source: Picture | None = None
    anchor: str = ""                               # its id on the page (default: from the title)

    @property
    def id(self) -> str:
        return self.anchor or slug(self.title)


@dataclass(frozen=True)
class Gallery:
    """What a job made: a title, a paragraph, the job's settings and command, its sections."""

    title: str
    sections: tuple[Section, ...]
    intro: str = ""
    details: tuple[tuple[str, str], ...] = ()
    command: str | None = None
    inline_commands: bool = False   # show each picture's command on the main page too (few pictures)
    extra: tuple[str, ...] = field(default_factory=tuple)   # paragraphs after the sections


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "item"


def _href(target: Path, start: Path) -> str:
    """A relative URL from the folder ``start`` to the file ``target``."""
    return quote(Path(os.path.relpath(target, start)).as_posix())


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


class _Layout:
    """Where each picture's thumbnail and page go, under ``<folder>/<name>_files/``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.page = folder / f"{name}.html"
        self.files = folder / f"{name}_files"
        self.style = self.files / "style.css"   # one stylesheet for every page

    def _relative(self, path: Path) -> Path:
        """The image's path inside the job's folder; an image elsewhere (an input) is named by its
        path's hash, so two inputs of the same name never share a thumbnail."""
        absolute = Path(os.path.abspath(path))
        try:
            return absolute.relative_to(os.path.abspath(self.folder))
        except ValueError:
            digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:10]
            return Path("_elsewhere") / f"{absolute.stem}-{digest}{absolute.suffix}"

    def thumb(self, picture: Picture) -> Path:
        rel = self._relative(picture.path)
        return self.files / "thumbs" / rel.with_suffix(".jpg")

    def picture_page(self, picture: Picture) -> Path:
        rel = self._relative(picture.path)
        return self.files / rel.with_suffix(".html")


def make_thumbnail(image: Path, thumb: Path, size: int | None = THUMB_SIZE) -> tuple[int, int]:
    """A JPEG of ``image`` with its longest side at most ``size`` (None: full size), unless an up to
    date one exists; returns its (width, height)."""
    if thumb.is_file() and thumb.stat().st_mtime_ns >= image.stat().st_mtime_ns:
        try:
            with Image.open(thumb) as existing:
                return existing.size
        except OSError:
            pass   # unreadable: made again below
    try:
        with Image.open(image) as source:
            rgb = flatten_alpha(source).convert("RGB")
    except OSError as exc:
        raise ImageError(f"cannot read '{image}' for the gallery page ({exc}); delete it and run the same "
                         "command again to remake it") from None
    if size is not None:
        rgb.thumbnail((size, size), Image.LANCZOS)

    def write(tmp: str) -> None:
        rgb.save(tmp, format="JPEG", quality=THUMB_QUALITY)

    atomic_write(thumb, write)
    return rgb.size


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically, and not at all when the file already holds it."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


STYLE = """
body { background: #161616; color: #e6e6e6; font: 15px/1.45 system-ui, sans-serif; margin: 0 1.5rem 3rem; }
a { color: #9cc3ff; }
h1 { font-size: 1.6rem; margin: 1.2rem 0 .3rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #333; padding-bottom: .2rem; }
h2 small, .note { color: #9a9a9a; font-weight: normal; }
table { border-collapse: collapse; margin: .5rem 0; }
td, th { text-align: left; padding: .1rem 1rem .1rem 0; vertical-align: top; }
th { color: #9a9a9a; font-weight: normal; }
pre { background: #0d0d0d; border: 1px solid #333; padding: .6rem; white-space: pre-wrap; word-break: break-all; }
nav.toc ul { columns: 14rem; padding-left: 1.2rem; }
ul.grid { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 10px; }
ul.grid li { width: WIDTHpx; font-size: 12px; }
ul.grid li.wide { width: auto; max-width: 100%; }
ul.grid img { display: block; background: #262626; max-width: 100%; height: auto; }
ul.grid .label { display: block; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; color: #b8b8b8;
                 text-decoration: none; }
ul.grid li.source { border-right: 1px solid #444; padding-right: 10px; }
ul.grid details pre { font-size: 11px; }
.full img, .full video { max-width: 100%; height: auto; background: #262626; }
""".replace("WIDTH", str(THUMB_SIZE))


def _head(title: str, style: str) -> list[str]:
    return ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>", f'<link rel="stylesheet" href="{style}">', "</head>", "<body>"]


def _rows(details: Iterable[tuple[str, str]]) -> list[str]:
    rows = [f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in details]
    return ["<table>", *rows, "</table>"] if rows else []


def _video_element(video: Path, poster: str | None, size: tuple[int, int], start: Path) -> str:
    """A <video> the browser plays (controls, no script), a GIF as an image, anything else a link."""
    kind = PLAYABLE.get(video.suffix.lower())
    width, height = size
    href = _href(video, start)
    if kind is not None:
        poster_attr = f' poster="{poster}"' if poster else ""
        return (f'<video controls preload="none" width="{width}" height="{height}"{poster_attr}>'
                f'<source src="{href}" type="{kind}"><a href="{href}">{_e(video.name)}</a></video>')
    if video.suffix.lower() == ".gif":
        return f'<img src="{href}" width="{width}" height="{height}" alt="{_e(video.name)}">'
    return f'<a href="{href}">{_e(video.name)}</a>'


def write_gallery(gallery: Gallery, folder: str | os.PathLike, name: str = PAGE_NAME) -> Path:
    """Write ``<folder>/<name>.html`` and its ``<name>_files/`` (thumbnails, one page per picture)
    for the pictures whose files exist; returns the page's path."""
    layout = _Layout(Path(folder), name)
    sections = [Section(s.title, tuple(p for p in s.pictures if p.path.is_file()), s.note,
                        s.source if s.source is not None and s.source.path.is_file() else None, s.anchor)
                for s in gallery.sections]
    # Reading order for a picture page's previous/next links: every section's source, then its pictures.
    order = [p for s in sections for p in ((s.source,) if s.source else ()) + s.pictures]
    section_of = {id(p): s for s in sections for p in ((s.source,) if s.source else ()) + s.pictures}
    thumbs: dict[int, tuple[int, int]] = {}
    for picture in order:
        size = None if picture.video is not None else THUMB_SIZE
        thumbs[id(picture)] = make_thumbnail(picture.path, layout.thumb(picture), size)
    for i, picture in enumerate(order):
        before = order[i - 1] if i > 0 else None
        after = order[i + 1] if i + 1 < len(order) else None
        page = _picture_page(gallery, section_of[id(picture)], picture, before, after, layout)
        _write_text(layout.picture_page(picture), page)
    _write_text(layout.style, STYLE.lstrip())
    _write_text(layout.page, _index_page(gallery, sections, thumbs, layout))
    return layout.page


def _index_page(gallery: Gallery, sections: Sequence[Section], thumbs: dict[int, tuple[int, int]],
                layout: _Layout) -> str:
    here = layout.folder
    out = _head(gallery.title, _href(layout.style, here))
    out.append(f"<h1>{_e(gallery.title)}</h1>")
    if gallery.intro:
        out.append(f"<p>{_e(gallery.intro)}</p>")
    out += _rows(gallery.details)
    if gallery.command:
        out.append(f"<p class=\"note\">made by</p><pre><code>{_e(gallery.command)}</code></pre>")
    if len(sections) > 1:
        out.append('<nav class="toc"><ul>')
        for s in sections:
            note = f" <span class=\"note\">{_e(s.note)}</span>" if s.note else ""
            out.append(f'<li><a href="#{_e(s.id)}">{_e(s.title)}</a>{note}</li>')
        out.append("</ul></nav>")
    for s in sections:
        note = f" <small>{_e(s.note)}</small>" if s.note else ""
        out.append(f'<section id="{_e(s.id)}">')
        if len(sections) > 1 or s.title != gallery.title:
            out.append(f"<h2>{_e(s.title)}{note}</h2>")
        if not s.pictures and s.source is None:
            out.append('<p class="note">nothing here yet: run the same command to make it</p>')
        out.append('<ul class="grid">')
        cells = ([(s.source, "source")] if s.source else []) + [(p, "") for p in s.pictures]
        for picture, role in cells:
            width, height = thumbs[id(picture)]
            thumb = _href(layout.thumb(picture), here)
            link = _href(layout.picture_page(picture), here)
            if picture.video is not None:
                cell = _video_element(picture.video, thumb, (width, height), here)
                classes = "wide"
            else:
                cell = (f'<a href="{link}"><img src="{thumb}" width="{width}" height="{height}" '
                        f'loading="lazy" alt="{_e(picture.heading)}"></a>')
                classes = role
            out.append(f'<li class="{classes}">{cell}'
                       f'<a class="label" href="{link}" title="{_e(picture.heading)}">{_e(picture.label)}</a>')
            if gallery.inline_commands and picture.command:
                out.append(f"<details><summary>command</summary><pre><code>{_e(picture.command)}</code></pre>"
                           f"</details>")
            out.append("</li>")
        out.append("</ul>")
        out.append("</section>")
    out += [f"<p>{_e(text)}</p>" for text in gallery.extra]
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _picture_page(gallery: Gallery, section: Section, picture: Picture, before: Picture | None,
                  after: Picture | None, layout: _Layout) -> str:
    page = layout.picture_page(picture)
    here = page.parent
    out = _head(f"{picture.heading} - {gallery.title}", _href(layout.style, here))
    links = [f'<a href="{_href(layout.page, here)}#{_e(section.id)}">{_e(gallery.title)}: {_e(section.title)}</a>']
    if before is not None:
        links.append(f'<a href="{_href(layout.picture_page(before), here)}" rel="prev">previous: '
                     f'{_e(before.heading)}</a>')
    if after is not None:
        links.append(f'<a href="{_href(layout.picture_page(after), here)}" rel="next">next: {_e(after.heading)}</a>')
    out.append(f"<nav>{' &middot; '.join(links)}</nav>")
    out.append(f"<h1>{_e(picture.heading)}</h1>")
    width, height = image_size(picture.path)
    image = _href(picture.path, here)
    if picture.video is not None:
        element = _video_element(picture.video, _href(layout.thumb(picture), here), (width, height), here)
        out.append(f'<div class="full">{element}</div>')
        out.append(f'<p><a href="{_href(picture.video, here)}">{_e(picture.video.name)}</a> '
                   f'(poster frame: <a href="{image}">{_e(picture.path.name)}</a>)</p>')
    else:
        out.append(f'<div class="full"><a href="{image}"><img src="{image}" width="{width}" height="{height}" '
                   f'alt="{_e(picture.heading)}"></a></div>')
    out += _rows(picture.details + (("file", picture.path.name), ("size", f"{width} x {height} px")))
    if picture.command:
        out.append("<h2>Remake it</h2>")
        if picture.command_note:
            out.append(f"<p>{_e(picture.command_note)}</p>")
        out.append(f"<pre><code>{_e(picture.command)}</code></pre>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)
