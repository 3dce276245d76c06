"""JupyterLab, started the way the README's ``make lab`` starts it, serves the course with
ipywidgets 8: the widget manager extension is registered, so the advisor widget and tqdm's
progress bars render in the notebooks."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from jupyter_lab import jupyter_lab

ROOT = Path(__file__).resolve().parent.parent
WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"


def _get(url: str, token: str) -> dict | list:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    """`make lab`'s command (jupyter lab --ip=127.0.0.1 notebooks/) with a free port, a random
    token and no browser; yields its base URL and token, and shuts it down afterwards."""
    with jupyter_lab(Path("notebooks"), tmp_path_factory.mktemp("jupyter-runtime"), cwd=ROOT) as server:
        yield server.base, server.token


def _page_config(base: str, token: str) -> dict:
    """The configuration JupyterLab embeds in its page: what the browser will load."""
    request = urllib.request.Request(f"{base}/lab", headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        html = response.read().decode()
    match = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.S)
    assert match, "JupyterLab's page has no jupyter-config-data"
    return json.loads(match.group(1))


def test_lab_loads_the_ipywidgets_8_extension(lab):
    base, token = lab
    config = _page_config(base, token)
    federated = {e["name"]: e for e in config.get("federated_extensions", [])}
    assert WIDGETS_EXTENSION in federated, f"extensions the page loads: {sorted(federated)}"
    assert WIDGETS_EXTENSION not in config.get("disabledExtensions", [])
    entry = federated[WIDGETS_EXTENSION]
    request = urllib.request.Request(f"{base}/lab/extensions/{WIDGETS_EXTENSION}/{entry['load']}",
                                     headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and len(response.read()) > 1000, "the extension's code is served"
    # the extension manager lists it too (under a normalised name) at version 5.x = ipywidgets 8
    listed = {e["name"]: e for e in _get(f"{base}/lab/api/extensions", token)}
    manager = listed.get("jupyter-widgets-jupyterlab-manager") or listed.get(WIDGETS_EXTENSION)
    assert manager and manager.get("enabled") and manager["installed_version"].startswith("5.")


def test_lab_serves_the_course_notebooks_with_a_python_kernel(lab):
    base, token = lab
    listing = _get(f"{base}/api/contents", token)
    names = {item["name"] for item in listing["content"]}
    assert "01_data_loading.ipynb" in names
    specs = _get(f"{base}/api/kernelspecs", token)
    assert "python3" in specs["kernelspecs"]


def test_lab_refuses_requests_without_the_token(lab):
    base, _ = lab
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/api/contents", timeout=5)
    assert refused.value.code == 403
