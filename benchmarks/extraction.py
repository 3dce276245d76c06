"""Feature-extraction throughput of the default backbone, end to end from the JPEG files.

Every row times the whole way from the Alien vs Predator JPEG files on disk to one feature vector
per image (decoding, resizing, normalising and the forward pass), on the same images. The naive
loop is what a tutorial writes: torchvision ``ImageFolder`` + ``DataLoader`` decoding each JPEG
with PIL, resize + crop + normalise, NCHW float32, batch 64, ``torch.no_grad()``, the default
thread count. The course's path is :func:`tlcourse.features.extract_features` with its defaults
(on a CPU: ONNX Runtime, exported once into ``build/onnx`` before timing, one DataLoader worker
decoding while it computes, ``cpu_threads.engine_threads`` threads, batch 16). Next to it, at every
size: the eager PyTorch path (channels_last, inference mode, threads by timing), eager with bf16
autocast (features differ from float32 by bf16's rounding: reported, not a default), and ONNX
Runtime without the worker or with every thread. The ablation changes one thing at a time; "decode once" decodes and crops each JPEG once into a uint8 tensor
(:func:`tlcourse.data.load_images`) and then feeds :class:`tlcourse.data.TensorImages`,
which pays off when the same images are needed more than once (two input sizes, several layers).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset
from torchvision import transforms

from benchmarks.common import Section, machine, md_table, ratio
from tlcourse import cpu_threads, data, features, models, runtime

SPLITS = ("train", "validation")


def headless(model: nn.Module) -> nn.Module:
    """A copy of a registry backbone whose head is ``nn.Identity``: it returns the pooled features."""
    body = copy.deepcopy(model)
    parent, _, child = models.backbone_spec(model).head.rpartition(".")
    setattr(body.get_submodule(parent) if parent else body, child, nn.Identity())
    return body


def naive_features(body: nn.Module, loader: DataLoader, *, channels_last: bool = False,
                   inference_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial loop: ``body(x)`` batch by batch under ``no_grad`` (or ``inference_mode``)."""
    body.eval().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    feats, labels = [], []
    with torch.inference_mode() if inference_mode else torch.no_grad():
        for x, y in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            feats.append(body(x).float())
            labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def images_on_disk(transform: Any, n: int | None = None) -> Dataset:
    """Alien vs Predator train + validation (``n`` evenly spaced images, or all), read from the JPEGs."""
    both = ConcatDataset([data.course_dataset("alien-vs-predator", s, transform=transform) for s in SPLITS])
    if not n or n >= len(both):
        return both
    return Subset(both, np.linspace(0, len(both) - 1, n).round().astype(int).tolist())


def eval_transform(size: int) -> transforms.Compose:
    """The default backbone's eval preprocessing at ``size`` px (same crop fraction as at 224)."""
    p = models.backbone_spec(models.DEFAULT_BACKBONE).preprocessing()
    return models.Preprocessing(resize=round(size * p.resize / p.crop), crop=size, mean=p.mean, std=p.std,
                                interpolation=p.interpolation).eval_transform()


def decode_once(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode, resize and crop every image once (``dataset`` yields PIL crops): uint8 (N, 3, H, W)."""
    return data.load_images(dataset)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def gflops_per_image(model: nn.Module, size: int) -> float:
    """Forward FLOPs (2 x multiply-accumulates, as counted by torch's FlopCounterMode) of one image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def matmul_gflops(threads: int, n: int = 1536, repeats: int = 5) -> float:
    """Achieved float32 GFLOP/s of an n x n matmul with ``threads`` threads: a practical CPU peak."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        seconds, _ = timed(lambda: [a @ b for _ in range(repeats)])
    finally:
        torch.set_num_threads(previous)
    return 2 * n**3 * repeats / seconds / 1e9


def settings(*, bf16: bool | None = None, batch_size: int | None = None, **knobs: Any) -> dict[str, Any]:
    """``extract_features``' ``device`` and ``engine`` arguments on the CPU: ``bf16`` and ``batch_size``
    go to ``runtime.device_settings``; ``knobs`` (``engine``, ``workers``, ``threads``, ``engine_batch``,
    ``decode_ahead``) to ``features.engine_settings``, whose CPU policy fills in the rest."""
    device = runtime.device_settings("cpu", inference=True, bf16=bf16, batch_size=batch_size)
    return {"device": device, "engine": features.engine_settings(device, **knobs)}


def where_time_goes(model: nn.Module, size: int, images: int | None) -> dict[str, float]:
    """Milliseconds per image of each part of the course path, measured apart, and the rates they
    allow: decoding + preprocessing on one thread, and ONNX Runtime's forward pass (slices of
    ``features.engine.CPU_ENGINE_BATCH``) on decoded tensors with every core and with one."""
    ds = images_on_disk(eval_transform(size), images)
    with cpu_threads.one_thread():
        decode_s, (x, y) = timed(lambda: (torch.stack([ds[i][0] for i in range(len(ds))]), torch.arange(len(ds))))
    n, cores = len(x), os.cpu_count() or 1
    tensors = TensorDataset(x, y)
    features.extract_features(model, Subset(tensors, range(4)), **settings(decode_ahead=False), progress=False)
    engine_ms = {}
    for t in sorted({1, cores}):
        s, _ = timed(lambda t=t: features.extract_features(model, tensors, **settings(threads=t, decode_ahead=False),
                                                           progress=False))
        engine_ms[t] = 1000 * s / n
    decode_ms, all_cores = 1000 * decode_s / n, engine_ms[cores]
    return {"size": size, "decode_ms": round(decode_ms, 2), "engine_ms_1_thread": round(engine_ms[1], 2),
            f"engine_ms_{cores}_threads": round(all_cores, 2),
            "in_turn_img_per_s": round(1000 / (decode_ms + all_cores), 1),
            "overlapped_img_per_s": round(1000 / (all_cores + decode_ms / cores), 1),
            "engine_alone_img_per_s": round(1000 / all_cores, 1)}


def run(images: int | None = 160, sizes: tuple[int, ...] = (224, 160), compile_model: bool = False) -> Section:
    """Measure the ablation at the first size and naive vs each engine vs course at every size."""
    start_machine = machine()
    model = models.build_backbone(models.DEFAULT_BACKBONE).eval()
    body = headless(model)
    threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    check: dict[str, float] = {}

    def add(step: str, size: int, seconds: float, n: int, note: str = "") -> None:
        rows.append({"size": size, "step": step, "images": n, "seconds": round(seconds, 2),
                     "img_per_s": round(n / seconds, 1), "note": note})
        print(f"[extraction] {size}px {step}: {n / seconds:.1f} img/s {note}", flush=True)

    def loader(size: int, batch: int) -> DataLoader:
        return DataLoader(images_on_disk(eval_transform(size), images), batch_size=batch)

    cores = os.cpu_count() or 1
    export_s: dict[int, float] = {}
    thread_rates: dict[int, float] = {}  # what the eager row's thread choice timed (the last size)
    for size in sizes:
        n = len(images_on_disk(None, images))
        full = size == sizes[0]

        def course(size: int = size, **kw: Any) -> tuple[float, features.Extraction[torch.Tensor]]:
            ds = images_on_disk(eval_transform(size), images)
            return timed(lambda: features.extract_features(model, ds, **settings(**kw), progress=False))

        # the export happens once per backbone, layer and size (then build/onnx): not timed below
        export_s[size], _ = timed(lambda: features.extract_features(
            model, images_on_disk(eval_transform(size), 2), **settings(workers=0), progress=False))
        s, (naive, _) = timed(lambda: naive_features(body, loader(size, 64)))
        add("naive: ImageFolder+PIL, NCHW, no_grad, batch 64", size, s, n, f"{threads} threads")
        if full:
            s, _ = timed(lambda: naive_features(body, loader(size, 64), channels_last=True))
            add("+ channels_last", size, s, n)
            s, _ = timed(lambda: naive_features(body, loader(size, 64), channels_last=True, inference_mode=True))
            add("+ inference_mode", size, s, n)
            for batch in (64, 32, 16):
                s, _ = course(engine="eager", workers=0, batch_size=batch, threads=threads)
                add(f"eager extract_features, batch {batch}, {threads} threads", size, s, n)
            s, _ = course(engine="eager", workers=0, threads=1)
            add("eager extract_features, batch 16, 1 thread", size, s, n)
        s, eager_run = course(engine="eager", workers=0)
        eager, thread_rates = eager_run.features, eager_run.report.rates
        add("eager PyTorch: channels_last, threads by timing", size, s, n,
            f"chose {eager_run.report.threads} thread(s)")
        s, bf16_run = course(engine="eager", workers=0, bf16=True)
        bf16 = bf16_run.features
        add("eager + bf16 autocast", size, s, n, f"chose {bf16_run.report.threads} thread(s)")
        s, _ = course(engine="onnxruntime", workers=0, threads=cores, engine_batch=None, decode_ahead=False)
        add("onnxruntime, whole batches, decoding in turn", size, s, n, f"{cores} threads")
        s, _ = course(engine="onnxruntime", workers=0, threads=cores, decode_ahead=False)
        add(f"onnxruntime, slices of {features.engine.CPU_ENGINE_BATCH}, decoding in turn", size, s, n, f"{cores} threads")
        s, _ = course(engine="onnxruntime", workers=0, threads=cores, decode_ahead=True)
        add(f"onnxruntime, slices of {features.engine.CPU_ENGINE_BATCH}, decoding ahead on a thread", size, s, n,
            f"{cores} threads, not spinning")
        s, _ = course(engine="onnxruntime", workers=1, threads=cores)
        add("onnxruntime + 1 decoding worker, every core", size, s, n, f"{cores} threads")
        s, default_run = timed(lambda: features.extract_features(model, images_on_disk(eval_transform(size), images),
                                                                 progress=False))
        fast, used = default_run.features, default_run.report
        add("course default: extract_features", size, s, n,
            f"{used.engine}, {used.workers} worker(s), {used.threads} thread(s)")
        check[f"max_abs_diff_{size}"] = float((naive - fast).abs().max())
        check[f"max_abs_diff_eager_{size}"] = float((naive - eager).abs().max())
        check[f"max_abs_diff_bf16_{size}"] = float((naive - bf16).abs().max())
        if full:
            s2, _ = timed(lambda: naive_features(body, loader(size, 64)))
            add("naive again (drift check)", size, s2, n)
    # decode once, then every size from the same uint8 crops
    p = models.backbone_spec(model).preprocessing()
    crops = transforms.Compose([transforms.Resize(p.resize, interpolation=transforms.InterpolationMode(p.interpolation)),
                                transforms.CenterCrop(p.crop)])
    decode_s, (u8, labels) = timed(lambda: decode_once(images_on_disk(crops, images)))
    add("decode once into uint8 (load_images), no model", p.crop, decode_s, len(labels))
    cached_total = decode_s
    for size in sizes:
        ds = data.TensorImages(u8, labels, size=size, mean=p.mean, std=p.std)
        s, (f, _) = timed(lambda: features.extract_features(model, ds, progress=False))
        cached_total += s
        add("extract_features from the uint8 cache (TensorImages)", size, s, len(labels))
    result = _summarise(rows, sizes, model, decode_s, cached_total, compile_model, images)
    result["where_time_goes"] = [where_time_goes(model, size, images) for size in sizes]
    result.update(check=check, machine_start=start_machine, machine_end=machine(), images_arg=images,
                  thread_rates=thread_rates, export_seconds=export_s,
                  engines=_engines(rows, sizes))
    return Section("extraction", result, markdown(result))


def _rate(rows: list[dict[str, Any]], size: int, prefix: str) -> dict[str, Any]:
    return next(r for r in rows if r["size"] == size and r["step"].startswith(prefix))


ENGINE_ROWS = {"naive": "naive", "eager": "eager PyTorch", "bf16": "eager + bf16",
               "onnxruntime_whole_batches": "onnxruntime, whole", "onnxruntime_slices": f"onnxruntime, slices of {features.engine.CPU_ENGINE_BATCH}, decoding in turn",
               "onnxruntime_slices_decoding_ahead": f"onnxruntime, slices of {features.engine.CPU_ENGINE_BATCH}, decoding ahead",
               "onnxruntime_worker": "onnxruntime + 1", "course": "course default"}


def _engines(rows: list[dict[str, Any]], sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """One row per size: img/s of the naive loop and of each engine, side by side."""
    return [{"size": size, **{key: _rate(rows, size, prefix)["img_per_s"] for key, prefix in ENGINE_ROWS.items()}}
            for size in sizes]


def _summarise(rows: list[dict[str, Any]], sizes: tuple[int, ...], model: nn.Module, decode_s: float,
               cached_total: float, compile_model: bool, images: int | None) -> dict[str, Any]:
    first = sizes[0]
    naive = [r for r in rows if r["size"] == first and r["step"].startswith("naive")]
    naive_s = sum(r["seconds"] for r in naive) / len(naive)  # mean of the runs before and after
    for r in rows:
        base = naive_s if r["size"] == first else _rate(rows, r["size"], "naive")["seconds"]
        end_to_end = not (r["step"].startswith("decode") or "uint8 cache" in r["step"])  # the rest count decoding
        r["speedup_vs_naive"] = round(ratio(base, r["seconds"]), 2) if end_to_end else None
    headline = []
    for size in sizes:
        nv = naive_s if size == first else _rate(rows, size, "naive")["seconds"]
        fast = _rate(rows, size, "course default")
        flops = gflops_per_image(model, size)
        headline.append({"size": size, "naive_img_per_s": round(fast["images"] / nv, 1),
                         "course_img_per_s": fast["img_per_s"], "speedup": round(ratio(nv, fast["seconds"]), 2),
                         "gflop_per_image": round(flops, 3),
                         "course_gflop_per_s": round(flops * fast["img_per_s"], 1)})
    naive_all = naive_s + sum(_rate(rows, s, "naive")["seconds"] for s in sizes[1:])
    both = {"sizes": list(sizes), "naive_seconds": round(naive_all, 2), "decode_once_seconds": round(cached_total, 2),
            "speedup": round(ratio(naive_all, cached_total), 2)}
    peak = {t: round(matmul_gflops(t), 1) for t in sorted({1, torch.get_num_threads()})}
    result: dict[str, Any] = {"rows": rows, "headline": headline, "all_sizes_from_one_decode": both,
                              "matmul_gflop_per_s": peak, "whole_set_images": len(images_on_disk(None, None)),
                              "compile": _compile_row(model, first, images) if compile_model else None}
    return result


def _compile_row(model: nn.Module, size: int, images: int | None) -> dict[str, Any]:
    """torch.compile (inductor, freezing) of the headless backbone, timed including compilation."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    body = headless(model).eval().to(memory_format=torch.channels_last)
    compiled = torch.compile(body)
    loader = DataLoader(images_on_disk(eval_transform(size), images), batch_size=64)
    try:
        first_s, _ = timed(lambda: naive_features(compiled, loader, channels_last=True, inference_mode=True))
        warm_s, _ = timed(lambda: naive_features(compiled, loader, channels_last=True, inference_mode=True))
    except Exception as err:  # no compiler toolchain, unsupported platform
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    n = len(loader.dataset)  # type: ignore[arg-type]
    return {"size": size, "images": n, "first_run_seconds_incl_compile": round(first_s, 1),
            "warm_img_per_s": round(n / warm_s, 1)}


def markdown(r: dict[str, Any]) -> str:
    m, both = r["machine_start"], r["all_sizes_from_one_decode"]
    n = r["rows"][0]["images"]
    whole = r["whole_set_images"]
    compile_line = ("torch.compile: not run (pass `--compile`; measured once by hand: 56 s to compile, "
                    "then ~1.4-1.8x the eager rate, so it does not pay for one pass over 894 images)"
                    if r["compile"] is None else f"torch.compile: {r['compile']}")
    return f"""# Feature extraction, end to end from the JPEG files

`{models.DEFAULT_BACKBONE}`, Alien vs Predator, {n} of the {whole} images (evenly spaced; `--images 0`
for all), torch {m['torch']}, {m['torch_threads']} threads, {m['cpu_count']} CPUs, load average
{m['load_average']} at the start and {r['machine_end']['load_average']} at the end.
Whole-set time = {whole} / img/s.

## Naive loop vs the course's default path

{md_table(r['headline'])}
Both sizes from one decode (decode + crop once into uint8, then 224 and 160 px from memory):
{both['decode_once_seconds']} s vs {both['naive_seconds']} s naive (decoding twice): **{both['speedup']}x**.

Goal >= 5x end to end at {r['headline'][0]['size']} px: **{'met' if r['headline'][0]['speedup'] >= 5 else 'not met'}** ({r['headline'][0]['speedup']}x).
The course path reaches {r['headline'][0]['course_gflop_per_s']} GFLOP/s; float32 matmul on this machine at the same
time (a practical peak) reaches {r['matmul_gflop_per_s']} GFLOP/s by thread count.
Naive vs course features: max abs difference {r['check']} (the course and eager float32 paths must stay
below 1e-4; bf16 is listed for its rounding). ONNX export (once per size, then `build/onnx`, not in the
rates): {r['export_seconds']} s.

## Engines side by side (img/s, end to end)

{md_table(r['engines'])}
The course default is ONNX Runtime in slices of {features.engine.CPU_ENGINE_BATCH}, decoding
{'ahead on a background thread' if features.engine.CPU_DECODE_AHEAD else 'in turn (features.engine.CPU_DECODE_AHEAD is off)'}.

## Where the time goes (ms per image, each part measured apart)

{md_table(r['where_time_goes'])}
`in_turn`: decoding then computing, one after the other; `overlapped`: decoding hidden behind the
engine on spare core time (the best the two parts allow); `engine_alone`: no decoding at all.
5x the naive loop at {r['headline'][0]['size']} px needs {round(5 * r['headline'][0]['naive_img_per_s'], 1)} img/s.

## Ablation (one change at a time)

{md_table(r['rows'], ['size', 'step', 'images', 'seconds', 'img_per_s', 'speedup_vs_naive', 'note'])}
{compile_line}.
"""
