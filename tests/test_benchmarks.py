"""benchmarks/: table writers, ratios, peak-memory measurement, naive vs course extraction, CLI.

Everything runs on generated data (a tiny JPEG folder in tmp_path, a tiny registered backbone).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from benchmarks import SECTIONS, extraction
from benchmarks import __main__ as cli
from benchmarks.common import Section, md_table, ratio, run_measured, write_section
from tlcourse import cpu_threads, data, features, models, runtime
from tlcourse.features import engine as engine_mod
from tlcourse.models import BackboneSpec

TINY = BackboneSpec(name="tiny-bench", family="test", arch="tiny", head="fc",
                    stages=(("stem", ("stem",)),), feature_dim=8, description="a test backbone")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 2)
        self.tlcourse_backbone = "tiny-bench"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stem(x)))


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Tiny:
    monkeypatch.setitem(models.BACKBONES, "tiny-bench", TINY)
    model = Tiny()
    with torch.no_grad():
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
    return model


@pytest.fixture
def jpegs(tmp_path: Path) -> Path:
    """Two classes of six random JPEGs of different sizes."""
    rng = np.random.default_rng(0)
    for c in ("alien", "predator"):
        (tmp_path / c).mkdir()
        for i in range(6):
            h, w = 20 + 3 * i, 28 - 2 * i
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.jpg")
    return tmp_path


def test_ratio() -> None:
    assert ratio(10.0, 2.0) == 5.0
    assert ratio(1.0, 4.0) == 0.25
    with pytest.raises(ValueError):
        ratio(1.0, 0.0)


def test_md_table_aligns_numbers_and_escapes() -> None:
    table = md_table([{"step": "a|b", "img_per_s": 12.345, "ok": True}, {"step": "c", "img_per_s": 1234.5, "ok": False}])
    lines = table.strip().splitlines()
    assert lines[0] == "| step | img_per_s | ok |"
    assert lines[1] == "|---|---:|---|"
    assert lines[2] == "| a\\|b | 12.3 | yes |"
    assert lines[3] == "| c | 1234 | no |"
    assert md_table([]) == "(no rows)\n"


def test_write_section(tmp_path: Path) -> None:
    md = write_section(Section("demo", {"x": 1.5, "path": tmp_path}, "# Demo\n"), tmp_path)
    assert md.read_text() == "# Demo\n"
    assert json.loads((tmp_path / "demo.json").read_text()) == {"x": 1.5, "path": str(tmp_path)}


def test_run_measured_sees_a_200_mb_child() -> None:
    code = "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5); print('ok')"
    m = run_measured([sys.executable, "-c", code], poll_s=0.05)
    assert m.returncode == 0 and m.output.strip() == "ok"
    assert m.maxrss_mb >= 200
    assert m.tree_peak_mb >= 200
    small = run_measured([sys.executable, "-c", "pass"])
    assert small.maxrss_mb < 150  # the measurement is of the child, not of this test process
    failed = run_measured([sys.executable, "-c", "raise SystemExit(3)"])
    assert failed.returncode == 3 and not failed.timed_out


def test_naive_and_course_extraction_agree(tiny: Tiny, jpegs: Path) -> None:
    tf = transforms.Compose([transforms.Resize(18), transforms.CenterCrop(16), transforms.ToTensor(),
                             transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    ds = datasets.ImageFolder(str(jpegs), transform=tf)
    body = extraction.headless(tiny)
    assert isinstance(body.fc, nn.Identity) and isinstance(tiny.fc, nn.Linear)  # a copy
    naive, y1 = extraction.naive_features(body, DataLoader(ds, batch_size=5))
    cl, _ = extraction.naive_features(body, DataLoader(ds, batch_size=5), channels_last=True, inference_mode=True)
    fast, y2 = features.extract_features(tiny, ds, batch_size=4, progress=False)
    assert naive.shape == (12, 8)
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cl, naive, atol=1e-5, rtol=1e-4)
    assert torch.equal(y1, y2)
    # decoding once into uint8 crops gives the same features at the crop size
    u8, labels = extraction.decode_once(datasets.ImageFolder(str(jpegs), transform=transforms.Compose(
        [transforms.Resize(18), transforms.CenterCrop(16)])))
    cached, _ = features.extract_features(tiny, data.TensorImages(u8, labels, size=16, mean=(0.5,) * 3,
                                                                       std=(0.5,) * 3), progress=False)
    torch.testing.assert_close(cached, naive, atol=1e-5, rtol=1e-4)


def test_extraction_thread_choice_restores_and_matches(tiny: Tiny, jpegs: Path) -> None:
    """The eager engine times its thread count; ONNX Runtime (the CPU default) uses a fixed one."""
    ds = datasets.ImageFolder(str(jpegs), transform=transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()]))
    before = torch.get_num_threads()
    timed = features.extract_features(tiny, ds, batch_size=2, engine="eager", progress=False)
    auto, report = timed.features, timed.report
    assert torch.get_num_threads() == before
    assert report.threads in {1, before} and report.engine == "eager"
    if before > 1:
        assert set(report.rates) == {1, before}
    eager_one = features.engine_settings("cpu", engine="eager", threads=1)
    fixed = features.extract_features(tiny, ds, batch_size=2, engine=eager_one, progress=False)
    one = fixed.features
    assert fixed.report == features.ExtractionReport(threads=1, rates={}, engine="eager", workers=eager_one.workers,
                                                     decode_ahead=False)
    torch.testing.assert_close(auto, one)
    onnx = features.extract_features(tiny, ds, batch_size=2, threads=1, progress=False)
    ort = onnx.features
    assert onnx.report.engine == "onnxruntime" and onnx.report.threads == 1
    assert torch.get_num_threads() == before
    torch.testing.assert_close(ort, one, atol=1e-4, rtol=1e-4)


def test_thread_chooser_keeps_the_faster() -> None:
    chooser = cpu_threads.ThreadChooser(None)
    chooser.previous, chooser.trials = 4, [4, 1]
    chooser.rates = {4: 10.0, 1: 25.0}
    assert chooser.best() == 1
    chooser.rates = {4: 30.0, 1: 25.0}
    assert chooser.best() == 4
    assert cpu_threads.ThreadChooser(3).best() == 3
    assert cpu_threads.ThreadChooser(None, cpu=False).trials == []
    assert features.engine_settings("cpu").threads is None
    before = torch.get_num_threads()
    assert cpu_threads.ThreadChooser(3).restore() == 3 and torch.get_num_threads() == before


def test_cli_parsing() -> None:
    args = cli.parse_args([])
    assert args.sections == list(SECTIONS) and args.images == 160 and args.naive_epochs == 1
    assert args.notebook_profile == "ci"
    quick = cli.parse_args(["--quick"])
    assert "notebooks" not in quick.sections and quick.images == 64
    only = cli.parse_args(["--only", "notebooks", "--notebook-profile", "default", "--notebooks", "01"])
    assert only.sections == ["notebooks"] and only.notebook_profile == "default" and only.notebooks == ["01"]
    with pytest.raises(SystemExit):
        cli.parse_args(["--only", "nonsense"])


def test_run_measured_kills_a_hung_tree() -> None:
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    m = run_measured([sys.executable, "-c", code], poll_s=0.05, timeout_s=1.0)
    assert m.timed_out and m.returncode != 0 and m.seconds < 10


def test_batches_are_fetched_on_one_thread(tiny: Tiny) -> None:
    seen: list[int] = []

    class Spy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            seen.append(torch.get_num_threads())
            return torch.rand(3, 8, 8), i % 2

    before = torch.get_num_threads()
    feats, labels = features.extract_features(tiny, Spy(), batch_size=2, threads=before, progress=False)
    assert feats.shape == (6, 8) and labels.tolist() == [0, 1] * 3
    assert seen == [1] * 6 and torch.get_num_threads() == before


def test_summary_combines_the_latest_section_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path))
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    for name in ("notebooks-default", "extraction", "notebooks-ci", "unrelated"):
        (folder / f"{name}.md").write_text(f"# {name}\n")
    assert [p.stem for p in cli.section_reports()] == ["extraction", "notebooks-ci", "notebooks-default"]


def test_onnx_engine_reports_a_skip_without_onnxruntime(monkeypatch):
    from benchmarks import onnx_engine

    monkeypatch.setattr(onnx_engine, "_import_onnxruntime", lambda: None)
    section = onnx_engine.run(size=32, batch=2, rounds=1)
    assert section.name == "onnx_engine" and "not installed" in section.data["skipped"]
    assert "Skipped" in section.markdown


def test_onnx_engine_times_the_session_the_engine_runs(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's ONNX Runtime session is the engine's cpu_session, with torch's thread count."""
    from benchmarks import onnx_engine

    made = []
    real = engine_mod.cpu_session

    def spy(source, **options):
        made.append((options, real(source, **options)))
        return made[-1][1]

    monkeypatch.setattr(engine_mod, "cpu_session", spy)
    monkeypatch.setattr(models, "build_backbone", lambda name: tiny)
    section = onnx_engine.run(size=32, batch=2, rounds=1)
    assert [options for options, _ in made] == [{"threads": torch.get_num_threads()}]
    options = made[0][1].get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (torch.get_num_threads(), 1)
    assert section.data["max_abs_difference"] < 1e-4 and section.data["rows"][0]["onnxruntime_img_per_s"] > 0


def test_onnx_engine_extra_path_goes_after_the_course_packages(monkeypatch, tmp_path):
    from benchmarks import onnx_engine

    monkeypatch.setenv("TLCOURSE_EXTRA_PATH", str(tmp_path))
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    onnx_engine._import_onnxruntime()
    import sys

    assert sys.path[-1] == str(tmp_path)  # never ahead of the course's own numpy


def test_engine_rows_agree_on_generated_data(tiny: Tiny, jpegs: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The extraction section's engine rows (eager, bf16, ONNX Runtime with and without a worker)
    give the naive loop's features (bf16 within its rounding), and the side-by-side table reads them."""
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "build"))
    tf = transforms.Compose([transforms.Resize(18), transforms.CenterCrop(16), transforms.ToTensor()])
    ds = datasets.ImageFolder(str(jpegs), transform=tf)
    naive, _ = extraction.naive_features(extraction.headless(tiny), DataLoader(ds, batch_size=5))
    rows = []
    for key, prefix in extraction.ENGINE_ROWS.items():
        kw = {"eager": {"engine": "eager"}, "bf16": {"engine": "eager", "bf16": True},
              "onnxruntime_whole_batches": {"engine": "onnxruntime", "workers": 0, "engine_batch": None,
                                            "decode_ahead": False},
              "onnxruntime_slices": {"engine": "onnxruntime", "workers": 0, "decode_ahead": False},
              "onnxruntime_slices_decoding_ahead": {"engine": "onnxruntime", "workers": 0, "decode_ahead": True},
              "onnxruntime_worker": {"engine": "onnxruntime", "workers": 1, "threads": 2}}.get(key, {})
        result = features.extract_features(tiny, ds, **extraction.settings(batch_size=2, **kw), progress=False)
        feats, report = result.features, result.report
        atol = 5e-2 if key == "bf16" else 1e-4
        torch.testing.assert_close(feats, naive, atol=atol, rtol=atol)
        if key.startswith("onnxruntime") or key == "course":
            assert report.engine == "onnxruntime"
        rows.append({"size": 16, "step": f"{prefix} row", "img_per_s": float(len(rows) + 1)})
    table = extraction._engines(rows, (16,))
    assert table == [{"size": 16, **{key: float(i + 1) for i, key in enumerate(extraction.ENGINE_ROWS)}}]
    assert report.workers == engine_mod.CPU_INFERENCE_WORKERS  # the measured default (the course row, last)
    assert report.decode_ahead is engine_mod.CPU_DECODE_AHEAD


def test_training_steps_section_on_a_tiny_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import training_steps

    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    class Depthwise(Small):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, groups=4))

    monkeypatch.setattr(training_steps.models, "build_backbone",
                        lambda name, **k: Depthwise() if name == "depthwise" else Small())
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    section = training_steps.run(sizes=(8, 12), batch=2, steps=1, rounds=1, backbones=("depthwise", "dense"), side=6)
    rows = section.data["rows"]
    assert section.name == "training_steps" and [(r["backbone"], r["size"]) for r in rows] == [
        ("depthwise", 8), ("depthwise", 12), ("dense", 8), ("dense", 12)]
    assert all(r["fp32_img_per_s"] > 0 and r["bf16_img_per_s"] > 0 for r in rows)
    # the course's advice: bf16 for dense models on a CPU with native bf16, never for depthwise ones
    assert [r["course_advice"] for r in rows] == ["fp32", "fp32", "bf16", "bf16"]
    assert [c["layer"].split()[0] for c in section.data["convolutions"]] == ["depthwise", "dense"]
    assert all(c["fp32_ms"] > 0 and c["bf16_ms"] > 0 for c in section.data["convolutions"])
    assert "bf16" in section.markdown and section.data["cpu_supports_bf16"] is True


def test_headline_interleaves_repeats_and_reports_median_ratios() -> None:
    from benchmarks import headline

    calls: list[str] = []
    speeds = {"slow": 0.004, "fast": 0.001}

    def contender(name: str):
        def run() -> None:
            calls.append(name)
            end = __import__("time").perf_counter() + speeds[name]
            while __import__("time").perf_counter() < end:
                pass
        return run

    out = headline.interleaved({n: contender(n) for n in speeds}, {"slow": 10, "fast": 10}, rounds=3,
                               min_seconds=0.02, baseline="slow")
    order = [t["contender"] for t in out["timings"]]
    assert order == ["slow", "fast", "fast", "slow", "slow", "fast"]  # A B, B A, A B
    assert out["passes"]["fast"] >= out["passes"]["slow"] >= 1  # planned from a warm-up pass
    assert all(t["seconds"] >= 0.02 and t["passes"] >= out["passes"][t["contender"]] for t in out["timings"])
    ratio_fast = out["summary"]["fast"]["ratio_to_slow"]
    assert 2.0 < ratio_fast["median"] < 6.0 and ratio_fast["min"] <= ratio_fast["median"] <= ratio_fast["max"]
    assert out["summary"]["slow"]["ratio_to_slow"]["median"] == 1.0
    assert headline.spread([1.0, 2.0, 3.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "q1": 1.75,
                                                      "q3": 4.75, "rounds": 4}
