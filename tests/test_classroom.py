"""A classroom on one machine (issue 15, point 4): two processes running the same notebook at once,
with the same ``data/`` and ``build/``, stage and extract the same dataset, fill the same feature
cache entry, record into the same metrics file and save the same checkpoint. Afterwards both have
succeeded, every file is complete and loadable, and no recorded metric is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from tlcourse import data
from tlcourse.courseware import results
from tlcourse.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 25

WORKER = textwrap.dedent("""
    import dataclasses, glob, sys, time
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from tlcourse import data
    from tlcourse.courseware import results
    from tlcourse._io import remove_partial_files
    from tlcourse.features.cache import cached_features
    from tlcourse.train.checkpoint import save_checkpoint
    me, sha, folder = sys.argv[1:]
    counts = {"train": {"alien": 3, "predator": 3}, "validation": {"alien": 2, "predator": 3}}
    data.DATASETS["alien-vs-predator"] = dataclasses.replace(
        data.DATASETS["alien-vs-predator"], sha256=sha, class_counts=counts, url="http://127.0.0.1:9/x")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    features = TensorDataset(torch.randn(8, 3, 2, 2), torch.arange(8) % 2)
    open(f"{folder}/ready-{me}", "w").close()
    while len(glob.glob(folder + "/ready-*")) < 2:  # both begin together, after their imports
        time.sleep(0.005)
    found = data.locate("alien-vs-predator", download=False, progress=False)
    assert sorted(p.name for p in found.iterdir()) == ["train", "validation"], found
    cached_features(model, features, root=folder + "/features", dataset_id="eight", progress=False)
    for i in range(ROUNDS):
        results.record("03_feature_extraction", {f"{me}_{i}": i})
        remove_partial_files(folder + "/ckpt", "last.pt")  # what Checkpoints does at the start of fit
        save_checkpoint({"format": 1, "model": model.state_dict(), "epoch": i, "by": me}, folder + "/ckpt/last.pt")
    print("ok", me)
""").replace("ROUNDS", str(ROUNDS))


def test_two_notebooks_at_once_share_data_and_build_without_damage(dataset_dirs, tiny_data, tmp_path: Path) -> None:
    archive = tiny_data.avp_zip(dataset_dirs.mirror / "alien-vs-predator.zip")
    build = tmp_path / "build"
    env = {**os.environ, "TLCOURSE_BUILD_DIR": str(build), "OMP_NUM_THREADS": "1"}
    build.mkdir()
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, name, data.sha256sum(archive), str(build)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    outputs = [w.communicate(timeout=120) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0 and out.startswith("ok"), err[-3000:]

    # the dataset: one complete folder, no staging leftovers
    assert sorted(p.name for p in dataset_dirs.data.iterdir()) == ["alien-vs-predator"]
    assert data.count_images(dataset_dirs.data / "alien-vs-predator" / "train") == {"alien": 3, "predator": 3}
    # the feature cache: one loadable entry
    (entry,) = (build / "features").iterdir()
    assert torch.load(entry, weights_only=True)["features"].shape == (8, 4)
    # the metrics: every value of both workers
    os.environ["TLCOURSE_BUILD_DIR"] = str(build)
    try:
        recorded = results.load_metrics("03_feature_extraction")
    finally:
        del os.environ["TLCOURSE_BUILD_DIR"]
    assert recorded == {f"{me}_{i}": i for me in "ab" for i in range(ROUNDS)}
    # the checkpoint: complete, from the last round of one of them, and no partial files
    ckpt = load_checkpoint(build / "ckpt" / "last.pt")
    assert ckpt["epoch"] == ROUNDS - 1 and ckpt["by"] in ("a", "b")
    assert [p.name for p in (build / "ckpt").iterdir()] == ["last.pt"]
    assert sorted(p.name for p in build.glob("ready-*")) == ["ready-a", "ready-b"]
    assert json.loads((build / "metrics" / "03_feature_extraction.json").read_text())["notebook"] == "03_feature_extraction"
