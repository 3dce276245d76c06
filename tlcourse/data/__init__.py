"""Datasets for the course: a registry, lookup with checksums, checked image folders, splits.

The submodules, from the bottom up (each imports only those above it):

- :mod:`.registry`   the course's datasets by name (:data:`DATASETS`, :func:`dataset_spec`), errors
- :mod:`.checksums`  sha256/md5 of a file, and verification
- :mod:`.download`   :func:`download_url`: one URL to a file, all or nothing
- :mod:`.archives`   :func:`safe_extract`: zip/tar unpacking that cannot escape its folder
- :mod:`.fetch`      :func:`locate` (``data/`` -> mirror -> download), :func:`status`, :func:`stage`
- :mod:`.images`     one image file: :func:`load_rgb`, :func:`to_rgb`, :func:`image_problem`
- :mod:`.walk`       walking class folders: links followed, each real folder and file once
- :mod:`.folders`    ``root/<class>/<image>`` folders: :func:`scan_image_folder`, :class:`CheckedImageFolder`
- :mod:`.datasets`   torch datasets: :func:`course_dataset` (by name), :func:`folder_dataset` (by path),
  :func:`cifar10`, :func:`medmnist`, :class:`TensorImages`
- :mod:`.splits`     :func:`stratified_subset`, :func:`stratified_split`, :func:`find_duplicates`
- :mod:`.loading`    :func:`loader_throughput`

Everything public is re-exported here: ``from tlcourse import data; data.locate("brain-mri")``.
"""

from __future__ import annotations

from tlcourse.data.archives import safe_extract
from tlcourse.data.checksums import sha256sum, verify_file
from tlcourse.data.datasets import (
    NpzImageDataset,
    TensorImages,
    cifar10,
    course_dataset,
    dataset_num_classes,
    folder_dataset,
    load_images,
    medmnist,
)
from tlcourse.data.download import download_url
from tlcourse.data.fetch import count_images, locate, stage, status
from tlcourse.data.folders import (
    BadFile,
    CheckedImageFolder,
    EmptyClassWarning,
    FolderScan,
    ImageFolderError,
    SkippedFilesWarning,
    scan_image_folder,
)
from tlcourse.data.images import Transform, image_problem, load_rgb, to_rgb
from tlcourse.data.loading import loader_throughput
from tlcourse.data.registry import (
    CIFAR10_CLASSES,
    DATASETS,
    ChecksumError,
    DatasetLayoutError,
    DatasetNotFoundError,
    DatasetSpec,
    DownloadError,
    UnsafeArchiveError,
    dataset_spec,
)
from tlcourse.data.splits import (
    find_duplicates,
    stratified_split,
    stratified_subset,
    targets_of,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "BadFile",
    "CheckedImageFolder",
    "ChecksumError",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "EmptyClassWarning",
    "FolderScan",
    "ImageFolderError",
    "NpzImageDataset",
    "SkippedFilesWarning",
    "TensorImages",
    "Transform",
    "UnsafeArchiveError",
    "cifar10",
    "count_images",
    "course_dataset",
    "dataset_num_classes",
    "dataset_spec",
    "download_url",
    "find_duplicates",
    "folder_dataset",
    "image_problem",
    "load_images",
    "load_rgb",
    "loader_throughput",
    "locate",
    "medmnist",
    "safe_extract",
    "scan_image_folder",
    "sha256sum",
    "stage",
    "status",
    "stratified_split",
    "stratified_subset",
    "targets_of",
    "to_rgb",
    "verify_file",
]
