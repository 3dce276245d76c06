"""JPEG decoding + transform throughput by number of DataLoader workers (no model).

Each run iterates once over the Alien vs Predator JPEGs through ``tlcourse.data.course_dataset`` with
the default backbone's eval transform (PIL decode, resize, crop, to tensor, normalise), so it shows
how fast the input pipeline alone can feed a model, and whether worker processes help here.
Worker start-up is included (it is paid on every pass unless ``persistent_workers=True``).
"""

from __future__ import annotations

from benchmarks.common import Section, machine, md_table, ratio
from benchmarks.extraction import eval_transform, images_on_disk
from tlcourse import data


def run(images: int | None = None, workers: tuple[int, ...] = (0, 1, 2), batches: tuple[int, ...] = (16, 64),
        size: int = 224) -> Section:
    start_machine = machine()
    dataset = images_on_disk(eval_transform(size), images)
    rows = data.loader_throughput(dataset, batches, workers)
    for r in rows:
        print(f"[loaders] batch {r['batch_size']}, {r['num_workers']} workers: {r['images_per_s']:.1f} img/s", flush=True)
    for r in rows:
        base = next(b for b in rows if b["batch_size"] == r["batch_size"] and b["num_workers"] == workers[0])
        r["speedup_vs_0_workers"] = round(ratio(base["seconds"], r["seconds"]), 2)
    result = {"size": size, "rows": rows, "machine_start": start_machine, "machine_end": machine()}
    m = start_machine
    md = f"""# JPEG decode + transform throughput by DataLoader workers

Alien vs Predator, {rows[0]['images']} JPEGs, eval transform at {size} px, no model; worker start-up included.
torch {m['torch']}, {m['cpu_count']} CPUs, load average {m['load_average']} -> {result['machine_end']['load_average']}.

{md_table(rows)}"""
    return Section("loaders", result, md)
