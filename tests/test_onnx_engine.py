"""tlcourse.features.engine: ONNX Runtime as the CPU engine of a frozen backbone.

Exported features must equal the eager ones (a tiny registered backbone on generated data, and the
real ``efficientnet_lite0``); the export is cached under ``build/onnx`` by weights, layers and input
size; a damaged file is exported again silently; any failure falls back to eager with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tlcourse import cpu_threads, features, models, runtime
from tlcourse.features import engine as engine_mod
from tlcourse.models import BackboneSpec

pytest.importorskip("onnxruntime")

TINY = BackboneSpec(name="tiny-onnx", family="test", arch="tiny", head="fc",
                    stages=(("stem", ("stem",)), ("blocks.0", ("blocks.0",)), ("blocks.1", ("blocks.1",))),
                    feature_dim=12, description="a test backbone")
LAYERS = [None, "stem", "blocks.0"]


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.SiLU()),
            nn.Sequential(nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU()),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(12, 3)
        self.tlcourse_backbone = "tiny-onnx"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))))


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> TinyNet:
    monkeypatch.setitem(models.BACKBONES, "tiny-onnx", TINY)
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as in a trained backbone
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def images(n: int = 10, size: int = 20, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 3)


#: The eager PyTorch route on one thread: the reference the engine's features must equal.
EAGER = features.EngineSettings(engine="eager", threads=1)


def run_both(model: nn.Module, ds: TensorDataset, layers: list[str | None], **kw: object):
    ref, y_ref = features.extract_stage_features(model, ds, layers, batch_size=4, engine=EAGER, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the engine must not fall back silently or noisily here
        got = features.extract_stage_features(model, ds, layers, batch_size=4, threads=1, progress=False, **kw)
    assert got.report.engine == "onnxruntime"
    assert torch.equal(got.labels, y_ref)
    return ref, got.features


def test_cpu_inference_defaults_to_onnxruntime_and_others_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    s = features.engine_settings("cpu")
    assert s.engine == engine_mod.CPU_ENGINE == "onnxruntime"
    assert features.engine_settings(runtime.device_settings("cpu", inference=True)).engine == "onnxruntime"
    bf16 = runtime.device_settings("cpu", inference=True, bf16=True)
    assert features.engine_settings(bf16).engine == "eager"  # bf16 is eager autocast
    assert not hasattr(runtime.device_settings("cpu"), "engine")  # training settings hold no engine knobs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = features.engine_settings("cuda")
    assert (cuda.engine, cuda.workers, cuda.engine_batch, cuda.decode_ahead) == ("eager", 0, None, False)
    with pytest.raises(ValueError, match="Unknown engine"):
        features.EngineSettings(engine="tensorrt")
    with pytest.raises(ValueError, match="Unknown engine"):
        features.engine_settings("cpu", engine="tensorrt")


def test_engine_threads_leave_a_core_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert cpu_threads.engine_threads(1) == 1 and cpu_threads.engine_threads(0) == 2
    assert cpu_threads.engine_threads(3) == 1 and cpu_threads.engine_threads(1, threads=2) == 2


def test_stage_features_equal_eager_and_the_export_is_cached(tiny: TinyNet, build: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ds = images(n=10)  # batches of 4, 4, 2: the exported batch size is dynamic
    ref, got = run_both(tiny, ds, LAYERS)
    for name in ref:
        assert got[name].shape == ref[name].shape and got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], ref[name], atol=1e-4, rtol=1e-4)
    files = list((build / "onnx").glob("tiny-onnx--20x20--*.onnx"))
    assert len(files) == 1 and not list((build / "onnx").glob(".*.tmp"))
    assert tiny.training  # the model's mode is restored after extraction and export

    def no_export(*a: object, **k: object) -> None:
        raise AssertionError("exported again although the file is cached")

    monkeypatch.setattr(engine_mod, "export_features", no_export)
    _, again = run_both(tiny, ds, LAYERS)
    torch.testing.assert_close(again, got)


def test_every_engine_session_has_the_threads_and_spinning_it_was_asked_for(tiny: TinyNet, build: Path) -> None:
    """One place sets the session options: the engine's own sessions, and sessions on a file or its bytes."""
    tiny.eval()
    onnx = engine_mod.OnnxFeatures(tiny, ["pooled"], lambda t: {"pooled": tiny.pool(tiny.blocks(tiny.stem(t)))},
                                   threads=2, spin=False, root=build)
    exported = onnx.session(images(n=2).tensors[0])
    (path,) = onnx.exported
    sessions = [exported, engine_mod.cpu_session(path), engine_mod.cpu_session(path.read_bytes(), threads=2, spin=False)]
    for session, threads, spin in zip(sessions, (2, 1, 2), ("0", "1", "0"), strict=True):
        options = session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (threads, 1)
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == spin


def test_key_follows_weights_layers_and_input_size(tiny: TinyNet) -> None:
    base = engine_mod.onnx_path(tiny, ["pooled"], (3, 20, 20))
    assert engine_mod.onnx_path(tiny, ["pooled"], (3, 20, 20)) == base
    assert engine_mod.onnx_path(tiny, ["stem"], (3, 20, 20)) != base
    assert engine_mod.onnx_path(tiny, ["pooled"], (3, 24, 24)) != base
    with torch.no_grad():
        tiny.fc.weight.add_(1.0)  # the head never runs in the exported graph
    assert engine_mod.onnx_path(tiny, ["pooled"], (3, 20, 20)) == base
    with torch.no_grad():
        tiny.stem[0].weight.add_(1.0)
    assert engine_mod.onnx_path(tiny, ["pooled"], (3, 20, 20)) != base


def test_new_input_size_gets_its_own_export(tiny: TinyNet, build: Path) -> None:
    for size in (20, 28):
        ref, got = run_both(tiny, images(n=5, size=size), [None])
        torch.testing.assert_close(got["pooled"], ref["pooled"], atol=1e-4, rtol=1e-4)
    assert {p.name.split("--")[1] for p in (build / "onnx").glob("*.onnx")} == {"20x20", "28x28"}


def test_a_damaged_file_is_exported_again_silently(tiny: TinyNet, build: Path) -> None:
    ds = images(n=6)
    ref, _ = run_both(tiny, ds, LAYERS)
    (path,) = (build / "onnx").glob("*.onnx")
    path.write_bytes(b"not an onnx file")
    _, got = run_both(tiny, ds, LAYERS)  # warnings are errors in run_both
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-4, rtol=1e-4)
    assert path.stat().st_size > 1000


def test_no_onnxruntime_falls_back_to_eager_with_a_warning(tiny: TinyNet, build: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise engine_mod.EngineUnavailable("onnxruntime is not installed")

    monkeypatch.setattr(engine_mod, "_import_onnxruntime", missing)
    ds = images(n=6)
    ref, _ = features.extract_stage_features(tiny, ds, LAYERS, batch_size=4, engine=EAGER, progress=False)
    with pytest.warns(RuntimeWarning, match="falls back to eager PyTorch: onnxruntime is not installed"):
        got = features.extract_stage_features(tiny, ds, LAYERS, batch_size=4, progress=False)
    assert got.report.engine == "eager"
    for name in ref:
        torch.testing.assert_close(got.features[name], ref[name])


def test_a_failed_export_falls_back_to_eager_with_a_warning(tiny: TinyNet, build: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: object, **k: object) -> None:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.warns(RuntimeWarning, match="ONNX export failed.*unsupported operator"):
        got, _ = features.extract_features(tiny, images(n=5), batch_size=4, progress=False)
    ref, _ = features.extract_features(tiny, images(n=5), batch_size=4, engine=EAGER, progress=False)
    torch.testing.assert_close(got, ref)
    assert not list(build.glob("onnx/*.onnx")) and not list(build.glob("onnx/.*.tmp"))  # nothing half-written kept


def test_a_plain_module_runs_on_the_engine_too(build: Path) -> None:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    ref, got = run_both(body, images(n=5), [None])
    torch.testing.assert_close(got["pooled"], ref["pooled"], atol=1e-4, rtol=1e-4)


def test_a_decoding_worker_overlaps_the_engine(tiny: TinyNet, build: Path) -> None:
    ds = images(n=4 * engine_mod.WORKER_MIN_BATCHES)
    ref, _ = features.extract_stage_features(tiny, ds, [None], batch_size=4, engine=EAGER, progress=False)
    default = features.extract_stage_features(tiny, ds, [None], batch_size=4, threads=1, progress=False)
    assert default.report.engine == "onnxruntime" and default.report.workers == features.engine_settings("cpu").workers
    torch.testing.assert_close(default.features["pooled"], ref["pooled"], atol=1e-4, rtol=1e-4)
    one = features.engine_settings("cpu", workers=1, threads=1)
    worker = features.extract_stage_features(tiny, ds, [None], batch_size=4, engine=one, progress=False)
    assert (worker.report.engine, worker.report.workers, worker.report.decode_ahead) == ("onnxruntime", 1, False)
    torch.testing.assert_close(worker.features["pooled"], ref["pooled"], atol=1e-4, rtol=1e-4)
    zero = features.extract_features(tiny, ds, batch_size=4, engine=one, num_workers=0, progress=False)
    assert zero.report.workers == 0  # an explicit count wins


def test_efficientnet_lite0_features_equal_eager(build: Path) -> None:
    try:
        model = models.build_backbone("efficientnet_lite0")
    except Exception as err:  # noqa: BLE001 - weights not staged on this machine
        pytest.skip(f"efficientnet_lite0 unavailable: {err}")
    ds = images(n=6, size=224)
    ref, got = run_both(model, ds, [None, "blocks.3"])
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-4, rtol=1e-4)
    assert ref["pooled"].shape == (6, 1280)


class ThreadRecording(torch.utils.data.Dataset):
    """Generated images that record which thread decoded each one, and can fail at one index."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.data, self.fail_at = images(n=n), fail_at
        self.threads: list[str] = []

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import threading

        if i == self.fail_at:
            raise OSError(f"image {i} is damaged")
        self.threads.append(threading.current_thread().name)
        return self.data[i]


def test_cpu_inference_decodes_ahead_and_runs_the_engine_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    s = features.engine_settings("cpu")
    assert s.decode_ahead is engine_mod.CPU_DECODE_AHEAD and s.engine_batch == engine_mod.CPU_ENGINE_BATCH
    eager_inference = features.engine_settings("cpu", engine="eager")
    assert not eager_inference.decode_ahead and eager_inference.engine_batch is None
    monkeypatch.setattr(engine_mod, "CPU_DECODE_AHEAD", True)
    assert features.engine_settings("cpu").decode_ahead
    assert not features.engine_settings("cpu", workers=1).decode_ahead  # a worker decodes instead
    assert features.engine_settings("cpu", engine_batch=None).engine_batch is None


def test_decoding_ahead_happens_on_another_thread_in_order(tiny: TinyNet, build: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "CPU_DECODE_AHEAD", True)
    ds = ThreadRecording(10)
    before = torch.get_num_threads()
    ref, y_ref = features.extract_stage_features(tiny, images(n=10), [None], batch_size=4, engine=EAGER,
                                                 progress=False)
    result = features.extract_stage_features(tiny, ds, [None], batch_size=4, progress=False)
    got, y = result
    assert result.report.decode_ahead is True
    assert ds.threads and all(name.startswith("tlcourse-decode") for name in ds.threads)
    assert torch.equal(y, y_ref)  # the batches arrive in order
    torch.testing.assert_close(got["pooled"], ref["pooled"], atol=1e-4, rtol=1e-4)
    assert torch.get_num_threads() == before


def test_a_decoding_error_ahead_reaches_the_caller_and_threads_are_restored(tiny: TinyNet, build: Path) -> None:
    before = torch.get_num_threads()
    with pytest.raises(OSError, match="image 6 is damaged"):
        features.extract_features(tiny, ThreadRecording(10, fail_at=6), batch_size=4, progress=False)
    assert torch.get_num_threads() == before

    batches = []
    with pytest.raises(KeyboardInterrupt), cpu_threads.decoded_batches(range(5), ahead=True) as it:
        for b in it:
            batches.append(b)
            if b == 2:
                raise KeyboardInterrupt  # the learner stops the cell
    assert batches == [0, 1, 2] and torch.get_num_threads() == before
    with cpu_threads.decoded_batches(iter([]), ahead=True) as it:
        assert list(it) == []


def test_engine_slices_give_the_whole_batch_features(tiny: TinyNet, build: Path) -> None:
    ds = images(n=10)
    at_once = features.engine_settings("cpu", engine="onnxruntime", engine_batch=None)
    whole, y1 = features.extract_stage_features(tiny, ds, LAYERS, batch_size=10, engine=at_once, progress=False)
    sliced = features.engine_settings("cpu", engine="onnxruntime", engine_batch=3)  # 3 + 3 + 3 + 1
    result = features.extract_stage_features(tiny, ds, LAYERS, batch_size=10, engine=sliced, progress=False)
    got, y2 = result
    assert result.report.engine == "onnxruntime" and torch.equal(y1, y2)
    for name in whole:
        torch.testing.assert_close(got[name], whole[name], atol=1e-5, rtol=1e-5)
