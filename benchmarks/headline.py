"""The headline numbers, measured so that they hold still on a shared, noisy CPU.

``python -m benchmarks --only headline`` (about 5 minutes on the course's 2-core CPU). Three
measurements, each taken side by side in one run:

1. **Naive loop vs the course's path, 224 px, end to end from the JPEG files.** The naive loop is
   unchanged from :mod:`benchmarks.extraction`: torchvision ``ImageFolder`` + PIL, NCHW, ``no_grad``,
   batch 64. Against it: the course default (:func:`tlcourse.features.extract_features`, ONNX
   Runtime float32) and the same loader feeding the int8 graph (:func:`tlcourse.features.engine.
   quantize_int8`, calibrated on 64 training images). Every timing repeats its pass over the
   images until it has run at least ``min_seconds``; the contenders alternate within each round
   (A B C, then C B A), and each round gives a ratio to the naive loop measured beside it. The
   headline is the median ratio over the rounds with its range and interquartile range. The bound
   of this machine is printed beside the achieved rate: decoding (one thread) + the engine (every
   thread, decoded tensors) per image, measured apart.
2. **int8 against float32 for a linear probe**: logistic regression on each engine's training
   features, scored on the same 200 test images (the given validation folder), compared paired
   (:func:`tlcourse.evaluation.paired_comparison`: exact McNemar + Newcombe interval). int8 is fit
   for extraction when its accuracy is not measurably lower (:func:`tlcourse.evaluation.measurable`).
3. **Phone-sized photos.** The 200 test images are written as 4000x3000 JPEGs (fitted, with sensor-like
   noise, quality 90) and as the same photos at 640x480, under ``build/benchmarks/phone_photos``
   (made once). The course path's time on the two folders, interleaved; then one pass over the large
   photos decoded in full (``load_rgb(draft_size=None)``): its time, the feature difference to the
   draft decode, and the probe's accuracy on both, paired.

Writes ``build/benchmarks/headline.{json,md}``.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.datasets import ImageFolder

from benchmarks.common import Section, machine, md_table, out_dir
from benchmarks.extraction import eval_transform, headless, images_on_disk, naive_features
from tlcourse import cpu_threads, data, evaluation, features, models
from tlcourse.features import engine

SIZE = 224
PHONE = (4000, 3000)
SMALL = (640, 480)


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def timed_passes(fn: Callable[[], Any], images: int, min_seconds: float, passes: int) -> dict[str, float]:
    """Run ``fn`` (one pass over ``images`` images) ``passes`` times, and on until ``min_seconds``
    have passed (a slowdown from other jobs must not shorten a timing); img/s over all passes."""
    start, done = time.perf_counter(), 0
    while done < passes or time.perf_counter() - start < min_seconds:
        fn()
        done += 1
    seconds = time.perf_counter() - start
    return {"img_per_s": images * done / seconds, "seconds": seconds, "passes": done}


def passes_for(fn: Callable[[], Any], min_seconds: float) -> int:
    """One warm-up pass of ``fn``; the number of passes that then lasts at least ``min_seconds``."""
    start = time.perf_counter()
    fn()
    return max(1, math.ceil(min_seconds / max(time.perf_counter() - start, 1e-6)))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, range and interquartile range of ``values`` (per-round ratios or rates)."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "q1": round(q1, 2), "q3": round(q3, 2), "rounds": len(values)}


def interleaved(contenders: dict[str, Callable[[], Any]], images: dict[str, int], rounds: int,
                min_seconds: float, baseline: str) -> dict[str, Any]:
    """Time each contender ``rounds`` times, alternating their order round by round (A B C, C B A).

    Each timing repeats the pass until it lasts ``min_seconds`` (the count is fixed by a warm-up
    pass). Returns every timing and, per contender, the spread of its rate and of its ratio to
    ``baseline`` measured in the same round.
    """
    names = list(contenders)
    passes = {name: passes_for(fn, min_seconds) for name, fn in contenders.items()}
    timings: list[dict[str, Any]] = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            t = timed_passes(contenders[name], images[name], min_seconds, passes[name])
            timings.append({"round": r + 1, "contender": name, **{k: round(v, 2) for k, v in t.items()}})
            print(f"[headline] round {r + 1} {name}: {t['img_per_s']:.1f} img/s ({t['passes']} pass(es), "
                  f"{t['seconds']:.1f} s)", flush=True)
    rate = {(t["round"], t["contender"]): t["img_per_s"] for t in timings}
    summary = {}
    for name in names:
        rates = [rate[(r + 1, name)] for r in range(rounds)]
        ratios = [rate[(r + 1, name)] / rate[(r + 1, baseline)] for r in range(rounds)]
        summary[name] = {"img_per_s": spread(rates), "ratio_to_" + baseline: spread(ratios)}
    return {"timings": timings, "summary": summary, "passes": passes}


class Int8Features:
    """The course's CPU loop (in-process decoding, batches of 16, slices of 4) feeding the int8 graph
    of the default backbone's pooled features."""

    def __init__(self, model: nn.Module, calibration: torch.Tensor, threads: int | None = None) -> None:
        self.body = headless(model).eval()
        forward = lambda x: {"pooled": self.body(x)}  # noqa: E731
        self.threads = threads or cpu_threads.engine_threads(0, None)
        self.onnx = engine.OnnxFeatures(self.body, ["pooled"], forward, threads=self.threads,
                                        batch=engine.CPU_ENGINE_BATCH, precision="int8", calibration=calibration)

    def __call__(self, dataset: Dataset, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        # ONNX Runtime has its own threads; torch's only decode and transform, and on a busy 2-core
        # CPU two of them waiting on each other made decoding ~9x slower (33 vs 300 ms per image)
        with torch.inference_mode(), cpu_threads.one_thread():
            for x, y in DataLoader(dataset, batch_size=batch_size):
                feats.append(self.onnx(x)["pooled"])
                labels.append(torch.as_tensor(y))
        return torch.cat(feats), torch.cat(labels)


def course_features(model: nn.Module, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The course default: ``extract_features`` on a CPU (ONNX Runtime float32)."""
    found = features.extract_features(model, dataset, progress=False)
    return found.features, found.labels


def course_one_thread(model: nn.Module, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The course default with torch on one thread meanwhile (decoding); ONNX Runtime keeps its own."""
    with cpu_threads.one_thread():
        return course_features(model, dataset)


def calibration_images(n: int = 64) -> torch.Tensor:
    """``n`` evenly spaced training images, preprocessed at 224 px (the int8 calibration set)."""
    train = data.course_dataset("alien-vs-predator", "train", transform=eval_transform(SIZE))
    return torch.stack([train[int(i)][0] for i in np.linspace(0, len(train) - 1, n).round()])


def bound(model: nn.Module, int8: Int8Features, images: int | None) -> dict[str, float]:
    """ms per image of decoding (one thread) and of each engine (decoded tensors), and the img/s
    the two allow one after the other: the most a loop that decodes in turn can reach."""
    ds = images_on_disk(eval_transform(SIZE), images)
    with cpu_threads.one_thread():
        start = time.perf_counter()
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        decode_ms = 1000 * (time.perf_counter() - start) / len(x)
    tensors = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    out = {"decode_ms": round(decode_ms, 2)}
    for name, run in (("float32", lambda: course_features(model, tensors)), ("int8", lambda: int8(tensors))):
        run()
        start = time.perf_counter()
        run()
        ms = 1000 * (time.perf_counter() - start) / len(x)
        out[f"engine_{name}_ms"] = round(ms, 2)
        out[f"bound_{name}_img_per_s"] = round(1000 / (decode_ms + ms), 1)
    return out


def phone_photos(root: Path, n: int | None = 200, seed: int = 0) -> tuple[Path, Path]:
    """The test images as phone photos: ``root/large`` at 4000x3000 and ``root/small`` at 640x480.

    Each image is fitted (cropped to 4:3, bicubic) to 4000x3000, given Gaussian noise of sd 3 grey
    levels (a sensor's grain, which JPEG must spend bits on, as on a real photo) and saved at quality
    90; the small one is the large one resized (Lanczos). Made once; kept under ``root``.
    """
    source = data.course_dataset("alien-vs-predator", "validation")
    pick = range(len(source)) if not n or n >= len(source) else np.linspace(0, len(source) - 1, n).round().astype(int)
    large, small = root / f"large-{len(pick)}", root / f"small-{len(pick)}"
    done = large / ".complete"
    if done.exists():
        return large, small
    rng = np.random.default_rng(seed)
    for k, i in enumerate(pick):
        path, label = source.samples[int(i)]
        name = f"{source.classes[label]}/{k:04d}.jpg"
        for folder in (large, small):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
        big = ImageOps.fit(data.load_rgb(path), PHONE, Image.Resampling.BICUBIC)
        noisy = np.asarray(big, dtype=np.int16) + rng.normal(0, 3, size=(PHONE[1], PHONE[0], 1)).astype(np.int16)
        big = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        big.save(large / name, quality=90)
        big.resize(SMALL, Image.Resampling.LANCZOS).save(small / name, quality=90)
    done.write_text("")
    return large, small


def folder(root: Path, draft: bool = True) -> ImageFolder:
    """``root`` as a dataset the course's way (``load_rgb``), decoded in draft mode or in full."""
    loader = data.load_rgb if draft else partial(data.load_rgb, draft_size=None)
    return ImageFolder(str(root), transform=eval_transform(SIZE), loader=loader)


def probe_correct(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
    """Logistic regression (``features.fit_logistic_regression``) on ``train``; right/wrong per test image."""
    fit = features.fit_logistic_regression(train[0], train[1], test[0], test[1])
    return fit["pipeline"].predict(test[0].numpy()) == test[1].numpy()


def comparison(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> dict[str, Any]:
    c = evaluation.paired_comparison(a, b)
    return {"a": name_a, "b": name_b, "accuracy_a": round(float(a.mean()), 4), "accuracy_b": round(float(b.mean()), 4),
            "diff": round(c.diff, 4), "low": round(c.low, 4), "high": round(c.high, 4), "p_value": round(c.p_value, 4),
            "n": c.n, "measurable": evaluation.measurable(c), "verdict": evaluation.verdict(name_a, name_b, c)}


def run(images: int | None = 160, rounds: int = 5, min_seconds: float = 5.0, phones: int | None = 200,
        parts: Sequence[str] = ("extraction", "int8", "phones")) -> Section:
    """The three measurements; see the module docstring. ``parts=("extraction",)`` stops after the first."""
    if list(parts) not in (["extraction"], ["extraction", "int8", "phones"]):
        raise ValueError(f"parts must be ('extraction',) or all three, got {parts}")
    result: dict[str, Any] = {"machine_start": machine(), "images": images, "rounds": rounds,
                              "min_seconds": min_seconds, "size": SIZE}
    model = models.build_backbone(models.DEFAULT_BACKBONE).eval()
    body = headless(model)
    int8 = Int8Features(model, calibration_images())
    ds = images_on_disk(eval_transform(SIZE), images)
    n = len(ds)
    course_features(model, images_on_disk(eval_transform(SIZE), 2))  # export once (then build/onnx), untimed
    int8(images_on_disk(eval_transform(SIZE), 2))  # quantize once, untimed
    result["int8_threads"] = int8.threads
    result["bound"] = bound(model, int8, images)
    print(f"[headline] bound: {result['bound']}", flush=True)

    contenders = {"naive": lambda: naive_features(body, DataLoader(ds, batch_size=64)),
                  "course_float32": lambda: course_features(model, ds),
                  "course_float32_torch_1_thread": lambda: course_one_thread(model, ds),
                  "course_int8_torch_1_thread": lambda: int8(ds)}
    result["extraction"] = interleaved(contenders, dict.fromkeys(contenders, n), rounds, min_seconds, "naive")
    if "extraction" == parts[-1]:
        result["machine_end"] = machine()
        return Section("headline", result, markdown(result))

    # int8 vs float32 for a probe: train features -> logistic regression -> the 200 test images
    train = data.course_dataset("alien-vs-predator", "train", transform=eval_transform(SIZE))
    test = data.course_dataset("alien-vs-predator", "validation", transform=eval_transform(SIZE))
    fp32_train, fp32_test = course_features(model, train), course_features(model, test)
    q_train, q_test = int8(train), int8(test)
    cosine = torch.nn.functional.cosine_similarity(fp32_test[0], q_test[0])
    fp32_ok, int8_ok = probe_correct(fp32_train, fp32_test), probe_correct(q_train, q_test)
    int8_cmp = comparison("int8", int8_ok, "float32", fp32_ok)
    int8_cmp["int8_fit_for_extraction"] = not (int8_cmp["measurable"] and int8_cmp["diff"] < 0)
    int8_cmp["feature_cosine_mean"] = round(float(cosine.mean()), 4)
    int8_cmp["feature_cosine_min"] = round(float(cosine.min()), 4)
    fp32_file = engine.onnx_path(int8.body, ["pooled"], (3, SIZE, SIZE))
    int8_cmp["file_mb_float32"] = round(fp32_file.stat().st_size / 2**20, 2)
    int8_cmp["file_mb_int8"] = round(engine.int8_path(fp32_file).stat().st_size / 2**20, 2)
    result["int8_probe"] = int8_cmp
    print(f"[headline] int8 probe: {int8_cmp['verdict']}", flush=True)

    # phone-sized photos: large (draft decode) vs small, interleaved; then one full decode of the large
    large, small = phone_photos(out_dir() / "phone_photos", phones)
    big_ds, small_ds = folder(large), folder(small)
    sizes = [os.path.getsize(p) for p, _ in big_ds.samples]
    result["phone_files"] = {"count": len(sizes), "large_mean_mb": round(float(np.mean(sizes)) / 2**20, 2),
                             "small_mean_kb": round(float(np.mean([os.path.getsize(p) for p, _ in small_ds.samples])) / 1024, 1)}
    phone = {"large_4000x3000": lambda: course_features(model, big_ds),
             "small_640x480": lambda: course_features(model, small_ds)}
    counts = dict.fromkeys(phone, len(big_ds))
    result["phones"] = interleaved(phone, counts, rounds, min_seconds, "small_640x480")
    start = time.perf_counter()
    full = course_features(model, folder(large, draft=False))
    full_s = time.perf_counter() - start
    drafted = course_features(model, big_ds)
    small_feats = course_features(model, small_ds)
    diff = (full[0] - drafted[0]).abs()
    cos = torch.nn.functional.cosine_similarity(full[0], drafted[0])
    draft_cmp = comparison("draft decode", probe_correct(fp32_train, drafted), "full decode",
                           probe_correct(fp32_train, full))
    draft_cmp.update(full_decode_img_per_s=round(len(big_ds) / full_s, 1),
                     feature_max_abs_diff=round(float(diff.max()), 4), feature_mean_abs_diff=round(float(diff.mean()), 5),
                     feature_cosine_mean=round(float(cos.mean()), 4), feature_cosine_min=round(float(cos.min()), 4),
                     small_640x480_accuracy=round(float(probe_correct(fp32_train, small_feats).mean()), 4))
    result["draft"] = draft_cmp
    print(f"[headline] draft: {draft_cmp['verdict']}", flush=True)
    result["machine_end"] = machine()
    return Section("headline", result, markdown(result))


def _ratio_row(name: str, s: dict[str, Any], key: str) -> dict[str, Any]:
    r, rate = s[key], s["img_per_s"]
    return {"contender": name, "img_per_s_median": rate["median"], "img_per_s_range": f"{rate['min']}-{rate['max']}",
            "ratio_median": r["median"], "ratio_iqr": f"{r['q1']}-{r['q3']}", "ratio_range": f"{r['min']}-{r['max']}"}


def markdown(r: dict[str, Any]) -> str:
    ext, b = r["extraction"]["summary"], r["bound"]
    rows = [_ratio_row(name, s, "ratio_to_naive") for name, s in ext.items()]
    best = max((s["ratio_to_naive"]["median"], name) for name, s in ext.items())
    m0, m1 = r["machine_start"], r["machine_end"]
    head = f"""# Headline: naive loop vs the course, held still

`{models.DEFAULT_BACKBONE}`, {SIZE} px, end to end from the JPEG files; {r['rounds']} interleaved rounds, each
timing at least {r['min_seconds']} s (passes repeated); torch {m0['torch']}, {m0['cpu_count']} CPUs, load average
{m0['load_average']} at the start and {m1['load_average']} at the end. Ratios are to the naive loop of the same round.

## Extraction, {r['images'] or 'all'} images per pass

{md_table(rows)}
Target >= 8x the naive loop: best median {best[0]}x ({best[1]}), {'met' if best[0] >= 8 else 'not met'}.

Bound of this machine (measured apart, ms per image): decode {b['decode_ms']} (one thread) + engine
float32 {b['engine_float32_ms']} / int8 {b['engine_int8_ms']} ({r['int8_threads']} threads) = at most
{b['bound_float32_img_per_s']} / {b['bound_int8_img_per_s']} img/s decoding in turn.
"""
    if "phones" not in r:
        return head
    ph = r["phones"]["summary"]
    phone_rows = [_ratio_row(name, s, "ratio_to_small_640x480") for name, s in ph.items()]
    big = ph["large_4000x3000"]["img_per_s"]["median"]
    slower = round(ph["small_640x480"]["img_per_s"]["median"] / big, 2)
    ip, dr = r["int8_probe"], r["draft"]
    return head + f"""
## int8 vs float32 for a linear probe (200 test images, paired)

int8 graph {ip['file_mb_int8']} MB vs float32 {ip['file_mb_float32']} MB; features' cosine similarity to
float32 mean {ip['feature_cosine_mean']}, min {ip['feature_cosine_min']}. Probe accuracy int8 {ip['accuracy_a']}
vs float32 {ip['accuracy_b']}: {ip['verdict']}. Fit for extraction (not measurably lower):
**{'yes' if ip['int8_fit_for_extraction'] else 'no'}**.

## Phone-sized photos ({r['phone_files']['count']} photos, mean {r['phone_files']['large_mean_mb']} MB at 4000x3000, {r['phone_files']['small_mean_kb']} KB at 640x480)

{md_table(phone_rows)}
The 4000x3000 photos take **{slower}x** the time of the same photos at 640x480 (target at most 2x:
{'met' if slower <= 2 else 'not met'}). Decoded in full instead (`load_rgb(draft_size=None)`, one pass):
{dr['full_decode_img_per_s']} img/s.

Draft vs full decode of the large photos: features' max abs difference {dr['feature_max_abs_diff']}, mean
{dr['feature_mean_abs_diff']}, cosine mean {dr['feature_cosine_mean']} (min {dr['feature_cosine_min']}); probe
(trained on the training images) accuracy {dr['accuracy_a']} vs {dr['accuracy_b']}: {dr['verdict']}
(the 640x480 photos: {dr['small_640x480_accuracy']}).
"""
