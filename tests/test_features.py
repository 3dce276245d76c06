"""tlcourse.features: extraction, the disk cache and classifiers on features.

Everything runs on a tiny registered backbone and a generated image folder, in seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Subset, TensorDataset
from torchvision import datasets, transforms

from tlcourse import features as F
from tlcourse import models
from tlcourse._io import atomic_save
from tlcourse.features import engine
from tlcourse.models import BackboneSpec
from tlcourse.runtime import DeviceSettings, device_settings

TINY = BackboneSpec(
    name="tiny", family="test", arch="tiny", head="fc",
    stages=(("stem", ("conv_stem",)), ("block1", ("block1",)), ("block2", ("block2",))),
    feature_dim=16, description="a test backbone",
)


class TinyNet(nn.Module):
    """Three stages of widths 4, 8, 16, global pooling and a 3-class head; counts its forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block1 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, 3)
        self.calls = 0
        self.tlcourse_backbone = "tiny"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(self.pool(self.block2(self.block1(self.conv_stem(x)))))


def make_tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        model.block1[1].running_mean.uniform_(-0.5, 0.5)
    return model


@pytest.fixture(autouse=True)
def tiny_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models.BACKBONES, "tiny", TINY)


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An image folder with two classes of five random 12x12 PNGs."""
    root = tmp_path / "images"
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(5):
            write_image(root / cls / f"{i}.png", seed=10 * c + i)
    return root


TF = transforms.Compose([transforms.Resize(16), transforms.ToTensor()])


#: The eager PyTorch route, for tests that watch the model's own forward calls (ONNX Runtime, the
#: CPU default, runs an exported graph instead; tests/test_onnx_engine.py covers it).
EAGER = F.EngineSettings(engine="eager")


def image_folder(root: Path, tf=TF) -> datasets.ImageFolder:
    return datasets.ImageFolder(str(root), transform=tf)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def test_each_stage_gives_one_pooled_vector_per_image(folder: Path):
    model = make_tiny()
    ds = image_folder(folder)
    feats, labels = F.extract_stage_features(model, ds, ["stem", "block1", "block2", None], batch_size=4,
                                             progress=False)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "stem": (10, 4), "block1": (10, 8), "block2": (10, 16), "pooled": (10, 16)}
    assert labels.dtype == torch.int64 and labels.tolist() == [0] * 5 + [1] * 5
    assert all(v.dtype == torch.float32 for v in feats.values())
    # the same numbers as pooling tlcourse.models.stage_outputs by hand, in eval mode
    x = torch.stack([ds[i][0] for i in range(10)])
    with torch.no_grad():
        maps = models.stage_outputs(model.eval(), x)
    for name, fmap in maps.items():
        torch.testing.assert_close(feats[name], fmap.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)


def test_final_features_are_what_the_head_sees(folder: Path):
    model = make_tiny()
    ds = image_folder(folder)
    feats, _ = F.extract_features(model, ds, progress=False)
    body = nn.Sequential(*list(model.children())[:-1]).eval()  # everything but the head
    with torch.no_grad():
        expected = body(torch.stack([ds[i][0] for i in range(10)]))
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)
    # a plain module (not a registry backbone): its own output is the feature
    plain, _ = F.extract_features(body, ds, progress=False)
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-5)


def test_a_shallow_stage_stops_the_forward_early(folder: Path):
    """The eager route (CUDA, MPS, or the CPU fallback) runs only up to the deepest requested stage."""
    model = make_tiny()
    deep_calls = []
    model.block2.register_forward_hook(lambda *a: deep_calls.append(1))
    F.extract_features(model, image_folder(folder), layer="block1", batch_size=5, progress=False, engine=EAGER)
    assert deep_calls == [], "block2 ran although only block1 was needed"
    F.extract_features(model, image_folder(folder), layer=None, batch_size=5, progress=False, engine=EAGER)
    assert len(deep_calls) == 2


def test_extraction_uses_eval_mode_and_restores_the_mode(folder: Path):
    model = make_tiny().train()
    ds = image_folder(folder)
    a, _ = F.extract_features(model, ds, layer="block1", progress=False)
    b, _ = F.extract_features(model, ds, layer="block1", batch_size=3, progress=False)
    assert model.training, "the caller's train mode is restored"
    torch.testing.assert_close(a, b)  # eval-mode BatchNorm: features do not depend on the batch


def test_unknown_stage_is_an_error(folder: Path):
    with pytest.raises(ValueError, match="Unknown stage"):
        F.extract_features(make_tiny(), image_folder(folder), layer="block9", progress=False)


def test_extraction_settings_per_device():
    cpu = device_settings("cpu", inference=True)
    assert cpu.amp_dtype is None and not cpu.non_blocking and not cpu.pin_memory and cpu.batch_size == 16
    gpu = device_settings(torch.device("cuda"), inference=True)
    assert gpu.amp_dtype in (torch.bfloat16, torch.float16) and gpu.non_blocking and gpu.pin_memory
    assert gpu.batch_size == 256 and gpu.scaler is None  # inference: no loss scaler
    assert device_settings("cpu", inference=True, batch_size=8).batch_size == 8
    assert isinstance(device_settings(None, inference=True), DeviceSettings)


def test_extraction_accepts_device_settings(folder: Path):
    model = make_tiny()
    ds = image_folder(folder)
    a, _ = F.extract_features(model, ds, progress=False)
    b, _ = F.extract_features(model, ds, device=device_settings("cpu", inference=True, batch_size=3,
                                                                   channels_last=False), progress=False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def test_heavy_image_files_decode_in_one_worker_per_core_and_give_the_same_features(folder: Path, monkeypatch):
    """Phone-sized files decode in worker processes while the engine keeps every core; small files
    (and loaders too short to repay a worker's start) decode in this process; the features agree."""
    monkeypatch.setattr(engine, "_workers_pay_off", lambda: True)
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 2)
    model = make_tiny()
    light = F.extract_features(model, image_folder(folder), batch_size=2, progress=False)
    assert (light.report.engine, light.report.workers) == ("onnxruntime", 0)
    monkeypatch.setattr(engine, "HEAVY_DECODE_BYTES", 1)  # every file is "heavy" now
    heavy = F.extract_features(model, image_folder(folder), batch_size=2, progress=False)
    assert (heavy.report.workers, heavy.report.threads) == (2, 2)
    torch.testing.assert_close(heavy.features, light.features)
    assert torch.equal(heavy.labels, light.labels)
    # the files of a Subset are its own; 3 batches are too few; a dataset without files stays in-process
    subset = Subset(image_folder(folder), [7, 2])
    assert engine.image_paths(subset) == [image_folder(folder).samples[i][0] for i in (7, 2)]
    paths = engine.image_paths(image_folder(folder))
    assert engine.decoding_plan(paths, batches=4) == (2, 2) and engine.decoding_plan(paths, batches=3) == (0, None)
    assert engine.image_paths(_tensors()) == [] and engine.decoding_plan([], batches=10) == (0, None)
    monkeypatch.setattr(engine, "HEAVY_DECODE_BYTES", 1 << 20)
    assert engine.decoding_plan(paths, batches=10) == (0, None)  # 12x12 PNGs are a few hundred bytes


def test_a_cache_hit_returns_identical_tensors_without_running_the_model(folder: Path, tmp_path: Path):
    model = make_tiny()
    first = F.cached_features(model, image_folder(folder), root=tmp_path / "cache", progress=False, engine=EAGER)
    assert not first.hit and first.path.is_file() and model.calls > 0
    calls = model.calls
    second = F.cached_features(model, image_folder(folder), root=tmp_path / "cache", progress=False, engine=EAGER)
    assert second.hit and model.calls == calls, "a hit must not run the model"
    assert torch.equal(first.features, second.features) and torch.equal(first.labels, second.labels)
    assert not list((tmp_path / "cache").glob("*.tmp")), "no temporary files are left behind"


def test_the_caches_live_where_tlcourse_cache_dir_says_and_the_build_folder_otherwise(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The notebook tests give each run its own build folder and one shared cache folder."""
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("TLCOURSE_CACHE_DIR", raising=False)
    model = make_tiny()
    default = F.cached_features(model, image_folder(folder), progress=False, engine=EAGER)
    assert default.path.is_relative_to(tmp_path / "build" / "features")
    monkeypatch.setenv("TLCOURSE_CACHE_DIR", str(tmp_path / "shared"))
    moved = F.cached_features(model, image_folder(folder), progress=False, engine=EAGER)
    assert not moved.hit and moved.path.is_relative_to(tmp_path / "shared" / "features")
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "another-build"))  # another run, the same cache
    assert F.cached_features(model, image_folder(folder), progress=False, engine=EAGER).hit


def _change_weights(model, root):
    with torch.no_grad():
        model.conv_stem.weight[0, 0, 0, 0] += 0.5
    return model, image_folder(root), None


def _change_transform(model, root):
    return model, image_folder(root, transforms.Compose([transforms.Resize(20), transforms.ToTensor()])), None


def _change_layer(model, root):
    return model, image_folder(root), "block1"


def _add_file(model, root):
    write_image(root / "dog" / "new.png", seed=99)
    return model, image_folder(root), None


def _edit_file(model, root):
    path = root / "cat" / "0.png"
    before = path.stat().st_mtime_ns
    write_image(path, seed=123)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # coarse filesystem clocks: a visible change
    return model, image_folder(root), None


@pytest.mark.parametrize("change", [_change_weights, _change_transform, _change_layer, _add_file, _edit_file],
                         ids=["weights", "transform", "layer", "file-added", "file-edited"])
def test_changing_any_part_of_the_key_misses_the_cache(change, folder: Path, tmp_path: Path):
    root = tmp_path / "cache"
    model = make_tiny()
    old = F.cached_features(model, image_folder(folder), root=root, progress=False)
    model, ds, layer = change(model, folder)
    new = F.cached_features(model, ds, layer=layer, root=root, progress=False)
    assert not new.hit and new.key != old.key
    fresh, _ = F.extract_features(model, ds, layer=layer, progress=False)
    torch.testing.assert_close(new.features, fresh)  # the new entry holds the new features
    assert F.cached_features(model, ds, layer=layer, root=root, progress=False).hit


def test_a_new_head_keeps_the_cache(folder: Path, tmp_path: Path):
    model = make_tiny()
    F.cached_features(model, image_folder(folder), root=tmp_path, progress=False)
    models.replace_head(model, 7)  # the head does not change the features
    assert F.cached_features(model, image_folder(folder), root=tmp_path, progress=False).hit


def test_an_explicit_transform_is_applied_and_keyed(folder: Path, tmp_path: Path):
    raw = datasets.ImageFolder(str(folder))  # yields PIL images
    a = F.cached_features(make_tiny(), raw, transform=TF, root=tmp_path, progress=False)
    torch.testing.assert_close(a.features, F.extract_features(make_tiny(), image_folder(folder), progress=False)[0])
    other = transforms.Compose([transforms.Resize(24), transforms.ToTensor()])
    assert not F.cached_features(make_tiny(), raw, transform=other, root=tmp_path, progress=False).hit


def test_array_datasets_are_fingerprinted_by_content(tiny_data, tmp_path: Path):
    from tlcourse.data import NpzImageDataset

    npz = tiny_data.npz(tmp_path / "m.npz")
    a = NpzImageDataset(npz, "train")
    b = NpzImageDataset(npz, "train")
    assert F.dataset_fingerprint(a) == F.dataset_fingerprint(b)
    b.images = b.images.copy()
    b.images[0, 0, 0] ^= 1  # one pixel
    assert F.dataset_fingerprint(a) != F.dataset_fingerprint(b)
    assert F.dataset_fingerprint(Subset(a, [0, 1])) != F.dataset_fingerprint(Subset(a, [0, 2]))
    t = TensorDataset(torch.zeros(2, 3), torch.tensor([0, 1]))
    u = TensorDataset(torch.zeros(2, 3), torch.tensor([1, 0]))
    assert F.dataset_fingerprint(t) != F.dataset_fingerprint(u)


def test_content_fingerprint_sees_edits_that_keep_size_and_mtime(folder: Path):
    ds = image_folder(folder)
    by_stat, by_content = F.dataset_fingerprint(ds), F.dataset_fingerprint(ds, content=True)
    path = folder / "cat" / "1.png"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert F.dataset_fingerprint(ds) == by_stat, "size + mtime cannot see this edit"
    assert F.dataset_fingerprint(ds, content=True) != by_content


def test_an_unreadable_cache_file_is_recomputed(folder: Path, tmp_path: Path):
    model = make_tiny()
    first = F.cached_features(model, image_folder(folder), root=tmp_path, progress=False)
    first.path.write_bytes(first.path.read_bytes()[:100])  # cut short, as by a crash mid-write
    again = F.cached_features(model, image_folder(folder), root=tmp_path, progress=False)
    assert not again.hit
    torch.testing.assert_close(again.features, first.features)


def test_several_layers_come_from_one_pass_and_are_cached_separately(folder: Path, tmp_path: Path):
    model = make_tiny()
    sets = F.cached_stage_features(model, image_folder(folder), ["stem", "block2", None], root=tmp_path,
                                   progress=False, engine=EAGER)
    assert model.calls == 1 and not any(s.hit for s in sets.values())
    more = F.cached_stage_features(model, image_folder(folder), ["block2", "block1"], root=tmp_path,
                                   progress=False, engine=EAGER)
    assert more["block2"].hit and not more["block1"].hit and model.calls == 2


def _concurrent_writer(root: str, folder: str, barrier, rounds: int) -> None:
    models.BACKBONES["tiny"] = TINY  # a spawned process starts without the test's registry patch
    torch.set_num_threads(1)
    model = make_tiny()
    ds = image_folder(Path(folder))
    for _ in range(rounds):
        barrier.wait()  # both processes find the cache empty and write the same key together
        F.cached_features(model, ds, root=root, progress=False)
        barrier.wait()
        if barrier.wait() == 0:  # one process empties the cache for the next round
            for p in Path(root).glob("*.pt"):
                p.unlink()
        barrier.wait()


def test_two_processes_filling_the_same_key_leave_a_complete_file(folder: Path, tmp_path: Path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    root = tmp_path / "cache"
    procs = [ctx.Process(target=_concurrent_writer, args=(str(root), str(folder), barrier, 3)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    model = make_tiny()
    expected, labels = F.extract_features(model, image_folder(folder), progress=False)
    F.cached_features(model, image_folder(folder), root=root, progress=False)  # refill after the last round
    hit = F.cached_features(model, image_folder(folder), root=root, progress=False)
    assert hit.hit
    torch.testing.assert_close(hit.features, expected)
    assert torch.equal(hit.labels, labels)
    assert not list(root.glob("*.tmp"))


def test_atomic_save_under_concurrent_rewrites(tmp_path: Path):
    """Readers racing two writers always find a complete file holding one writer's tensor."""
    ctx = mp.get_context("spawn")
    path = tmp_path / "entry.pt"
    atomic_save({"x": torch.zeros(100_000)}, path)
    procs = [ctx.Process(target=_rewrite, args=(str(path), float(v), 6)) for v in (1, 2)]
    for p in procs:
        p.start()
    seen = set()
    while any(p.is_alive() for p in procs):
        x = torch.load(path, weights_only=True)["x"]
        assert x.shape == (100_000,) and torch.all(x == x[0])
        seen.add(float(x[0]))
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert float(torch.load(path, weights_only=True)["x"][0]) in {1.0, 2.0}


def _rewrite(path: str, value: float, times: int) -> None:
    for _ in range(times):
        atomic_save({"x": torch.full((100_000,), value)}, Path(path))


# --------------------------------------------------------------------------------------------
# Classifiers on features
# --------------------------------------------------------------------------------------------


def blobs(n: int = 200, d: int = 20, classes: int = 3, seed: int = 0, spread: float = 1.0, centres_seed: int = 0):
    """Gaussian clusters around fixed class centres (``centres_seed``), noise drawn from ``seed``."""
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(centres_seed)) * 4
    y = torch.arange(n) % classes
    x = centres[y] + spread * torch.randn(n, d, generator=torch.Generator().manual_seed(seed + 1000))
    return x, y


def test_linear_probe_learns_separable_features():
    x, y = blobs()
    vx, vy = blobs(n=90, seed=1)  # new samples around the same centres
    out = F.train_linear_probe(x, y, vx, vy, epochs=10, lr=0.01, seed=0)
    assert out["accuracy"] >= 0.95
    assert len(out["history"]) == 10 and out["history"][-1]["train_loss"] < out["history"][0]["train_loss"]
    assert isinstance(out["head"], nn.Linear) and out["head"].out_features == 3


def test_linear_probe_is_deterministic_for_a_seed():
    x, y = blobs(spread=6.0)
    a = F.train_linear_probe(x, y, x, y, epochs=3, seed=1)
    b = F.train_linear_probe(x, y, x, y, epochs=3, seed=1)
    c = F.train_linear_probe(x, y, x, y, epochs=3, seed=2)
    assert a["history"] == b["history"] and torch.equal(a["head"].weight, b["head"].weight)
    assert not torch.equal(a["head"].weight, c["head"].weight)


def test_linear_probe_is_the_naive_loop_without_the_backbone():
    """Same seed, same shuffle, same head init: the classic DataLoader loop gives the same head."""
    x, y = blobs(n=100, spread=5.0)
    torch.manual_seed(3)
    head = nn.Linear(20, 3)
    loader = DataLoader(TensorDataset(x, y), batch_size=32,
                        sampler=RandomSampler(range(100), generator=torch.Generator().manual_seed(3)))
    opt = torch.optim.SGD(head.parameters(), lr=1e-3, momentum=0.9)
    for _ in range(4):
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(head(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    probe = F.train_linear_probe(x, y, x, y, epochs=4, lr=1e-3, seed=3)
    torch.testing.assert_close(probe["head"].weight, head.weight)


def test_logistic_regression_probe():
    x, y = blobs(spread=2.0)
    out = F.fit_logistic_regression(x, y, x, y)
    assert out["accuracy"] >= 0.95 and out["train_accuracy"] >= 0.95
    assert out["pipeline"].predict(x[:5].numpy()).tolist() == y[:5].tolist()
    noise = torch.randn(200, 20, generator=torch.Generator().manual_seed(9))
    assert F.fit_logistic_regression(noise[:100], y[:100], noise[100:], y[100:])["accuracy"] < 0.6


def test_cross_validated_probe_separates_signal_from_noise():
    x, y = blobs(spread=2.0)
    good = F.probe_accuracy_cv(x, y, folds=4)
    assert len(good["scores"]) == 4 and good["mean"] >= 0.95
    noise = torch.randn(200, 20, generator=torch.Generator().manual_seed(9))
    assert F.probe_accuracy_cv(noise, y, folds=4)["mean"] < 0.6


def test_nearest_neighbours_by_cosine_similarity():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    idx, sims = F.nearest_neighbours(torch.tensor([[2.0, 0.1]]), gallery, k=2)
    assert idx.tolist() == [[0, 2]] and sims[0, 0] > sims[0, 1]
    idx, _ = F.nearest_neighbours(gallery, gallery, k=1, exclude_self=True)
    assert idx[:, 0].tolist() != [0, 1, 2, 3]
    assert 0 not in idx[0].tolist()


# --------------------------------------------------------------------------------------------
# The one extraction loop: whole maps, mirror images, the device it is given; the activation cache
# --------------------------------------------------------------------------------------------


def _tensors(n: int = 6, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % 2)


def test_maps_stay_whole_and_mirror_images_are_the_flipped_inputs():
    model, data = make_tiny(), _tensors()
    found = F.extract_activations(model, data, ["block1", None], maps=["block1"], mirror=True, engine=EAGER,
                                  batch_size=4, progress=False)
    assert found.plain["block1"].shape == (6, 8, 8, 8) and found.plain["pooled"].shape == (6, 16)
    flipped = TensorDataset(data.tensors[0].flip(-1), data.tensors[1])
    alone = F.extract_activations(model, flipped, ["block1", None], maps=["block1"], engine=EAGER, progress=False)
    assert found.flipped is not None and alone.flipped is None
    for name in ("block1", "pooled"):
        torch.testing.assert_close(found.flipped[name], alone.plain[name], rtol=1e-5, atol=1e-6)
    pooled = F.extract_stage_features(model, data, ["block1"], engine=EAGER, progress=False).features["block1"]
    torch.testing.assert_close(found.plain["block1"].mean(dim=(2, 3)), pooled, rtol=1e-5, atol=1e-6)
    assert found.labels.tolist() == data.tensors[1].tolist()
    with pytest.raises(ValueError, match="not extracted"):
        F.extract_activations(model, data, ["block1"], maps=["block2"], engine=EAGER, progress=False)


def test_the_loop_runs_on_the_device_it_is_given(monkeypatch: pytest.MonkeyPatch):
    # CUDA 'present' (as in tests/test_gpu_path.py); the moves are recorded instead of made.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    moved: list[torch.device] = []
    monkeypatch.setattr(DeviceSettings, "prepare", lambda self, model: (moved.append(self.device), model)[1])
    monkeypatch.setattr(DeviceSettings, "to_device", lambda self, batch: (moved.append(self.device), batch)[1])
    model, data = make_tiny(), _tensors()
    settings = device_settings("cuda", inference=True, bf16=False)
    found = F.extract_activations(model, DataLoader(data, batch_size=3), ["block2"], device=settings,
                                  progress=False)
    assert found.report.engine == "eager"  # ONNX Runtime runs only on a CPU
    assert moved and all(d.type == "cuda" for d in moved) and len(moved) == 1 + 2  # the model, then 2 batches
    moved.clear()
    F.extract_activations(model, DataLoader(data, batch_size=3), ["block2"], device="cuda", progress=False)
    assert moved and all(d.type == "cuda" for d in moved)


def test_the_first_timed_batch_gives_a_rate():
    rates: list[float] = []
    F.extract_activations(make_tiny(), _tensors(9), [None], engine=EAGER, batch_size=3, progress=False,
                          on_rate=rates.append)
    assert len(rates) == 1 and rates[0] > 0


def test_the_activation_cache_streams_to_disk_and_maps_it_back(tmp_path: Path):
    model, data = make_tiny(), _tensors(7)
    derived: list[int] = []

    def derive(entry: F.ActivationSet):
        derived.append(len(entry))
        return {"twice": entry.plain["block1"].mean(dim=(2, 3)) * 2}, {"twice": entry.flipped["block1"][:, :1]}, {"x": 1.5}

    args = dict(data_id="seven tensors", root=tmp_path, maps=["block1"], mirror=True, engine=EAGER, batch_size=3,
                progress=False, derive=derive)
    first = F.cached_activations(model, data, ["block1", None], **args)
    assert not first.hit and derived == [7] and first.extra["x"] == 1.5
    assert sorted(p.name for p in first.path.iterdir()) == sorted(
        ["meta.json", "labels.bin"] + [f"{v}--{n}.bin" for v in ("plain", "flipped") for n in ("block1", "pooled", "twice")])
    assert not any(p.name.startswith(first.path.name + ".part") for p in tmp_path.iterdir())
    eager = F.extract_activations(model, data, ["block1", None], maps=["block1"], mirror=True, engine=EAGER,
                                  progress=False)
    calls = model.calls
    again = F.cached_activations(model, data, ["block1", None], **args)
    assert again.hit and model.calls == calls and derived == [7]
    if Path("/proc/self/maps").is_file():  # memory-mapped from the entry's file, not read into memory
        assert str(again.path / "plain--block1.bin") in Path("/proc/self/maps").read_text()
    for name in ("block1", "pooled"):
        assert torch.equal(again.plain[name], eager.plain[name]) and torch.equal(again.flipped[name], eager.flipped[name])
    torch.testing.assert_close(again.plain["twice"], eager.plain["block1"].mean(dim=(2, 3)) * 2)
    assert torch.equal(again.labels, data.tensors[1])
    rows = F.ArrayRows(again, "block1", "flipped")
    assert len(rows) == 7 and torch.equal(rows[4][0], eager.flipped["block1"][4]) and rows[4][1] == 0
    picked = again.rows("block1", torch.tensor([5, 0, 5]), "flipped")  # read, not mapped: a tensor of its own
    assert torch.equal(picked, eager.flipped["block1"][[5, 0, 5]]) and again.rows("pooled", []).shape == (0, 16)
    with pytest.raises(IndexError, match="row 7"):
        again.rows("block1", [7])
    # another data id, other weights: other entries; a cut file: computed again
    assert F.cached_activations(model, data, ["block1", None], **{**args, "data_id": "other"}).hit is False
    assert F.cached_activations(make_tiny(seed=1), data, ["block1", None], **args).hit is False
    with open(again.path / "plain--pooled.bin", "r+b") as f:
        f.truncate(10)
    redone = F.cached_activations(model, data, ["block1", None], **args)
    assert not redone.hit and torch.equal(redone.plain["pooled"], eager.plain["pooled"])


_HEAP_GROWTH = """
import queue, threading
import psutil, torch
from tlcourse.features.extract import bound_heap

def batches(n):
    # n decoded batches of 8 images at 224 px made in a thread (decode-ahead), used and freed here
    q = queue.Queue(maxsize=2)
    threading.Thread(target=lambda: [q.put(torch.empty(8, 3, 224, 224).fill_(0.5)) for _ in range(n)] + [q.put(None)]).start()
    keep, start = [], psutil.Process().memory_info().rss
    while (b := q.get()) is not None:
        y = torch.cat([b, b.flip(-1)])
        keep.append(y.mean((1, 2, 3)))
        del b, y
    return (psutil.Process().memory_info().rss - start) / 1e6

big = torch.empty(20_000_000).fill_(1)  # an eager pass's large activation, freed: glibc raises its mmap threshold
del big
print(batches(60), bound_heap(), batches(60))
"""


@pytest.mark.skipif(not os.path.isfile("/proc/self/status"), reason="glibc's mmap threshold: Linux only")
def test_bound_heap_keeps_a_passs_batches_from_growing_the_heap():
    """After a large freed buffer, batches made in one thread and freed in another grew the heap by
    about their size each (what made fit's memory grow with the folder); bound_heap stops it."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _HEAP_GROWTH], capture_output=True, text=True, check=True, timeout=300)
    before, bounded, after = done.stdout.split()
    if float(before) < 100:
        pytest.skip(f"this allocator did not grow the heap ({float(before):.0f} MB over 60 batches): nothing to bound")
    assert bounded == "True" and float(after) < 30, (before, after)
