"""Does every slide fit the screen, and PDF handouts: both through headless Chromium.

:func:`measure_deck` visits every slide of a deck with all its fragments shown and measures its
content against the slide (tests/test_slide_fit.py, ``python -m tlcourse slides --check``);
:func:`print_handouts` prints each deck with reveal.js's print layout, one page per slide
(``python -m tlcourse slides --pdf``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tlcourse.courseware.browser import Chromium, find_chromium

# ---------------------------------------------------------------- does every slide fit the screen?

#: The viewport the fit check and the handouts use (a 720p projector).
VIEWPORT = (1280, 720)
#: Slack, in slide pixels, for sub-pixel rounding when comparing content with the slide.
FIT_TOLERANCE = 2

#: JavaScript that visits every slide of a ready reveal.js deck with all its fragments shown and
#: measures, in slide pixels (reveal.js's width x height, before it scales to the window), the
#: box around every visible element of the slide, and the elements that cut their own content off
#: (a scrolled or hidden overflow: the audience cannot scroll a projected slide).
MEASURE_JS = r"""(() => {
  Reveal.configure({transition: 'none', backgroundTransition: 'none'});
  const cfg = Reveal.getConfig(), W = cfg.width, H = cfg.height;
  const rows = [];
  for (const slide of Reveal.getSlides()) {
    const at = Reveal.getIndices(slide);
    Reveal.slide(at.h, at.v || 0);
    while (Reveal.nextFragment()) {}
    const scale = Reveal.getScale() || 1;
    const box = slide.closest('.slides').getBoundingClientRect();
    let top = Infinity, bottom = -Infinity, left = Infinity, right = -Infinity;
    const clipped = [];
    for (const el of slide.querySelectorAll('*')) {
      if (el.closest('aside.notes')) continue;
      // not rendered: display none, or the body of a closed <details> (content-visibility hidden)
      if (el.checkVisibility ? !el.checkVisibility() : (el.closest('details:not([open])') && !el.closest('summary'))) continue;
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      top = Math.min(top, r.top); bottom = Math.max(bottom, r.bottom);
      left = Math.min(left, r.left); right = Math.max(right, r.right);
      const style = getComputedStyle(el);
      const hiddenX = style.overflowX !== 'visible' && el.scrollWidth > el.clientWidth + 2;
      const hiddenY = style.overflowY !== 'visible' && el.scrollHeight > el.clientHeight + 2;
      if ((hiddenX || hiddenY) && el.clientHeight > 0) {
        clipped.push({tag: el.tagName.toLowerCase(), cls: String(el.className).slice(0, 60),
                      hidden_width: Math.max(0, el.scrollWidth - el.clientWidth),
                      hidden_height: Math.max(0, el.scrollHeight - el.clientHeight)});
      }
    }
    const heading = slide.querySelector('h1, h2, h3, h4');
    rows.push({h: at.h, v: at.v || 0, width: W, height: H, zoom: parseFloat(slide.style.zoom) || 1,
               title: (heading ? heading.textContent : (slide.textContent || '')).replace(/[¶\s]+/g, ' ').trim().slice(0, 70),
               content_width: isFinite(left) ? (right - left) / scale : 0,
               content_height: isFinite(top) ? (bottom - top) / scale : 0,
               off_top: isFinite(top) ? (box.top - top) / scale : 0,
               off_bottom: isFinite(bottom) ? (bottom - box.bottom) / scale : 0,
               off_left: isFinite(left) ? (box.left - left) / scale : 0,
               off_right: isFinite(right) ? (right - box.right) / scale : 0,
               clipped: clipped.slice(0, 5)});
  }
  Reveal.slide(0, 0);
  return rows;
})()"""


@dataclass(frozen=True)
class SlideFit:
    """How one slide's content compares with the slide, in slide pixels (all fragments shown)."""

    h: int
    v: int
    title: str
    width: int  # the slide (reveal.js's configured width and height)
    height: int
    content_width: float  # the box around everything the slide shows
    content_height: float
    outside: float  # the most any content sticks out past an edge of the slide (0 when inside)
    clipped: tuple[dict[str, Any], ...]  # elements that hide part of their own content (scroll boxes)
    zoom: float = 1.0  # below 1 where the deck shrank the slide's content to fit (the template's fitSlide)

    @property
    def fits(self) -> bool:
        """True when the audience sees all of the slide: nothing outside it, nothing scrolled away."""
        return (self.content_height <= self.height + FIT_TOLERANCE and self.content_width <= self.width + FIT_TOLERANCE
                and self.outside <= FIT_TOLERANCE and not self.clipped)

    def describe(self) -> str:
        """One line for a failure message or a report."""
        what = f"slide {self.h}.{self.v} {self.title[:50]!r}: content {self.content_width:.0f}x{self.content_height:.0f}" \
               f" on a {self.width}x{self.height} slide" + (f" (shrunk to {self.zoom:.2f})" if self.zoom < 1 else "")
        if self.outside > FIT_TOLERANCE:
            what += f", {self.outside:.0f} px outside it"
        if self.clipped:
            c = self.clipped[0]
            what += f", {len(self.clipped)} box(es) hiding content (e.g. <{c['tag']} class={c['cls']!r}> hides " \
                    f"{c['hidden_width']}x{c['hidden_height']} px)"
        return what


def measure_deck(browser: Any, url: str) -> list[SlideFit]:
    """Open the deck at ``url`` in ``browser`` (a :class:`tlcourse.courseware.browser.Chromium`) and
    measure every slide with all its fragments shown, at the viewport :data:`VIEWPORT`."""
    browser.set_viewport(*VIEWPORT)
    browser.open(url)
    browser.wait_for("typeof Reveal !== 'undefined' && Reveal.isReady()", timeout=20)
    rows = browser.evaluate(MEASURE_JS)
    return [SlideFit(h=r["h"], v=r["v"], title=r["title"], width=r["width"], height=r["height"],
                     content_width=r["content_width"], content_height=r["content_height"],
                     outside=max(0.0, r["off_top"], r["off_bottom"], r["off_left"], r["off_right"]),
                     clipped=tuple(r["clipped"]), zoom=r["zoom"]) for r in rows]


# ---------------------------------------------------------------- PDF handouts

def print_handouts(decks: Sequence[Path], *, browser: Any = None, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Print each deck to ``<stem>.pdf`` next to it through headless Chromium, with reveal.js's
    print layout (``?print-pdf``): one page per slide, every fragment shown.

    ``browser`` is a :class:`tlcourse.courseware.browser.Chromium` to reuse (one is started and
    closed here otherwise). Returns one row per deck: deck, pdf, slides (as reveal.js counts them)
    and pages (in the PDF, :func:`pdf_page_count`).
    """
    if browser is None:
        binary = find_chromium()
        if binary is None:
            raise FileNotFoundError("The PDF handouts are printed by headless Chromium, which is not installed: "
                                    "`apt-get install chromium` (Debian/Ubuntu), then run the command again.")
        with Chromium(binary, width=VIEWPORT[0], height=VIEWPORT[1], timeout=timeout) as own:
            return print_handouts(decks, browser=own, timeout=timeout)
    rows = []
    for deck in decks:
        deck = Path(deck).resolve()
        browser.open(deck.as_uri() + "?print-pdf")
        # reveal.js wraps each slide in a .pdf-page once its print layout is done
        total = browser.wait_for("typeof Reveal !== 'undefined' && Reveal.isReady() && "
                                 "document.querySelectorAll('.pdf-page').length >= Reveal.getTotalSlides() && "
                                 "Reveal.getTotalSlides()", timeout=timeout)
        browser.wait_for("document.fonts.status === 'loaded' && Array.from(document.images).every(i => i.complete)",
                         timeout=timeout)
        pdf = browser.print_pdf(deck.with_name(deck.name.split(".")[0] + ".pdf"))
        rows.append({"deck": str(deck), "pdf": str(pdf), "slides": int(total), "pages": pdf_page_count(pdf)})
    return rows


def pdf_page_count(pdf: Path) -> int:
    """Pages in a PDF: poppler's ``pdfinfo`` when installed, else the file's page objects counted."""
    if shutil.which("pdfinfo"):
        info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
        found = re.search(r"^Pages:\s+(\d+)", info, flags=re.M)
        if found:
            return int(found.group(1))
    return len(re.findall(rb"/Type\s*/Page(?![A-Za-z])", Path(pdf).read_bytes()))


def check_fit(decks: Sequence[Path], *, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Measure every slide of each deck (:func:`measure_deck`, one headless Chromium for all).

    Returns one row per deck: deck, slides, overflowing (the :class:`SlideFit` of each slide that
    does not fit), shrunk (slides the template zoomed out to fit) and min_zoom.
    """
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("Measuring the slides needs headless Chromium, which is not installed: "
                                "`apt-get install chromium` (Debian/Ubuntu), then run the command again.")
    rows = []
    with Chromium(binary, width=VIEWPORT[0], height=VIEWPORT[1], timeout=timeout) as browser:
        for deck in decks:
            fits = measure_deck(browser, Path(deck).resolve().as_uri())
            rows.append({"deck": str(deck), "slides": len(fits), "overflowing": [f for f in fits if not f.fits],
                         "shrunk": sum(f.zoom < 1 for f in fits), "min_zoom": min((f.zoom for f in fits), default=1.0)})
    return rows

