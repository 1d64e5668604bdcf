"""Reading and writing: 2D images and masks, dataset folders, stacks (the registry of slice sources: folders, multi-page TIFF, Zarr/OME-Zarr, arrays), OME-NGFF metadata, atomic writers.

No torch here: everything is numpy, tifffile, Pillow and zarr."""

from tomoseg.io.datasets import (
    SPLITS,
    DatasetSpec,
    Pair,
    load_dataset,
    pair_files,
    read_pair,
    resolve_classes,
    split_pairs,
)
from tomoseg.io.images import (
    IMAGE_SUFFIXES,
    LOSSY_SUFFIXES,
    TIFF_SUFFIXES,
    list_images,
    read_image,
    read_mask,
    read_stack,
    unique_ids,
)
from tomoseg.io.labels import ClassIds, label_stats, resolve_class_ids, resolve_labels
from tomoseg.io.ome_zarr import (
    create_label_array,
    write_ngff_attrs,
)
from tomoseg.io.sources import (
    FORMATS,
    SliceSource,
    StackSource,
    open_source,
    parse_voxel_size,
)
from tomoseg.io.writers import (
    atomic_write,
    prepare_output_dir,
    write_image,
    write_json,
    write_mask,
    write_text,
)

__all__ = [
    "FORMATS",
    "ClassIds",
    "LOSSY_SUFFIXES",
    "DatasetSpec",
    "IMAGE_SUFFIXES",
    "Pair",
    "SPLITS",
    "SliceSource",
    "StackSource",
    "TIFF_SUFFIXES",
    "atomic_write",
    "create_label_array",
    "label_stats",
    "list_images",
    "load_dataset",
    "open_source",
    "pair_files",
    "parse_voxel_size",
    "prepare_output_dir",
    "read_image",
    "read_mask",
    "read_pair",
    "read_stack",
    "resolve_class_ids",
    "resolve_classes",
    "resolve_labels",
    "split_pairs",
    "unique_ids",
    "write_image",
    "write_json",
    "write_mask",
    "write_ngff_attrs",
    "write_text",
]
