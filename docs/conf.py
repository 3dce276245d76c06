"""Sphinx configuration of the course website (``make site``; staged and built by docs/site.py).

The lessons are the committed, executed notebooks, rendered by MyST-NB without running them.
Nothing is fetched from the network: no widget JavaScript from a CDN, no MathJax (the lessons'
prose has no LaTeX), and the book theme ships its fonts and icons.
"""

project = "Transfer Learning for Computer Vision"
author = "the tlcourse authors"
extensions = ["myst_nb"]
exclude_patterns = ["_build", "_extra", "generated", "**.ipynb_checkpoints"]
nb_execution_mode = "off"  # the committed outputs are the lesson; the site never re-runs a notebook
nb_ipywidgets_js = {}  # widget views fall back to their text; the widget manager would come from a CDN
nb_merge_streams = True
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type", "misc.highlighting_failure"]
html_theme = "sphinx_book_theme"
html_title = project
html_extra_path = ["_extra"]  # the reveal.js decks in _extra/slides/, copied as they are to <site>/slides/
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "use_download_button": False,
    "use_fullscreen_button": False,
}
html_last_updated_fmt = None
html_copy_source = False
# The theme's script logs a console error when no colour mode is set (a first visit); start light.
html_context = {"default_mode": "light"}
# Search works from file:// too (the site opened from disk): result summaries would fetch() each
# page, which browsers refuse for file:// URLs, so the results list titles and sections only.
html_show_search_summary = False
