"""The advisor widget in JupyterLab, in a real (headless, offline) Chromium (issue 15, point 6).

Starts the course's JupyterLab on 127.0.0.1 over a temporary folder holding one small notebook
that calls ``tlcourse.experiments.advisor.advisor_panel`` (the advisor's widget), opens it, runs its cells, and
checks that the sliders and the matrix figure render, and that moving the similarity slider
changes both the figure and the advice. Screenshots go to ``build/screenshots``. Without Chromium
it skips and names the package to install (under CI it fails: ``headless_chromium.open_chromium``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from headless_chromium import Chromium, open_chromium
from jupyter_lab import jupyter_lab

from tlcourse.paths import build_dir

ROOT = Path(__file__).resolve().parent.parent
CELL = ('from tlcourse.experiments.advisor import advisor_panel\n'
        'advisor_panel({"cifar10": (5000, 0.9), "brain-mri": (120, 0.2)})')

# What the page shows: the advice text and the figure's image data in the widget's output area.
ADVICE_JS = "[...document.querySelectorAll('.jp-OutputArea-output pre')].map(e => e.textContent).join('')"
NOTEBOOK_JS = "[...jupyterapp.shell.widgets('main')].find(w => w.sessionContext)"
FIGURE_JS = "(document.querySelector('.jp-OutputArea-output img') || {}).src || ''"


@pytest.fixture
def lab(tmp_path: Path):
    """JupyterLab over a tmp folder with ``advisor.ipynb``; yields the notebook's URL."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)],
                                            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                     "language": "python"}}),
                   folder / "advisor.ipynb")
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    flags = ["--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with jupyter_lab(folder, tmp_path / "runtime", extra_flags=flags, env=env, timeout=40) as server:
        yield f"{server.base}/lab/tree/advisor.ipynb?token={server.token}"


def _wait(browser: Chromium, expression: str, timeout: float, shots: Path) -> None:
    """``browser.wait_for``; on a timeout, a screenshot and what the page said, in the error."""
    try:
        browser.wait_for(expression, timeout=timeout)
    except TimeoutError as err:
        browser.screenshot(shots / "advisor-failure.png")
        state = browser.evaluate("JSON.stringify({title: document.title, app: !!window.jupyterapp, "
                                 "widget: !!(window.jupyterapp && jupyterapp.shell.currentWidget), "
                                 "text: document.body.innerText.slice(-600)})")
        raise AssertionError(f"{err}; page: {state}; errors: {browser.log.errors[-5:]}") from None


def _press_enter(browser: Chromium) -> None:
    for kind in ("rawKeyDown", "keyUp"):
        browser.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                     windowsVirtualKeyCode=13, nativeVirtualKeyCode=13)


@pytest.fixture
def browser() -> Iterator[Chromium]:
    yield from open_chromium("the advisor widget in JupyterLab", timeout=60)


def test_advisor_widget_renders_and_follows_its_slider(lab: str, browser: Chromium) -> None:
    shots = build_dir() / "screenshots"
    browser.open(lab)
    # A headless page has no focus, so the notebook is found among the open widgets and activated.
    _wait(browser, f"!!(window.jupyterapp && {NOTEBOOK_JS} && {NOTEBOOK_JS}.sessionContext.session "
                   f"&& {NOTEBOOK_JS}.sessionContext.session.kernel)", 60, shots)
    browser.evaluate(f"(() => {{ jupyterapp.shell.activateById({NOTEBOOK_JS}.id); return true; }})()")
    browser.evaluate("jupyterapp.commands.execute('notebook:run-all-cells').then(() => true, () => false)")
    _wait(browser, "document.querySelectorAll('.widget-slider').length >= 2 && "
                   f"({FIGURE_JS}.startsWith('data:image/png') || {FIGURE_JS}.startsWith('blob:'))",
          90, shots)
    _wait(browser, f"{ADVICE_JS}.includes('small & similar')", 30, shots)
    before_figure, before_advice = browser.evaluate(FIGURE_JS), browser.evaluate(ADVICE_JS)
    browser.screenshot(shots / "advisor-before.png")

    # Move the similarity slider: type into its readout and press Enter, as a learner can.
    browser.evaluate("(() => { const r = [...document.querySelectorAll('.widget-slider')]"
                     ".find(s => s.textContent.includes('similarity')).querySelector('.widget-readout');"
                     " r.focus(); r.textContent = '0.05'; return true; })()")
    _press_enter(browser)
    _wait(browser, f"{ADVICE_JS}.includes('small & dissimilar')", 30, shots)
    _wait(browser, f"!!{FIGURE_JS} && {FIGURE_JS} !== {before_figure!r}", 30, shots)
    after_figure, after_advice = browser.evaluate(FIGURE_JS), browser.evaluate(ADVICE_JS)
    browser.screenshot(shots / "advisor-after.png")
    assert after_advice != before_advice and "similarity 0.05" in after_advice
    assert after_figure != before_figure
    assert (shots / "advisor-before.png").stat().st_size > 1000
