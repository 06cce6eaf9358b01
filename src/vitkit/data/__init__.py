"""Data for vitkit: image loading, transforms and augmentation, and the data sets it trains on.

Names are imported on first use (PEP 562): the command line reads the torch-free ``augment_config`` to build its
flags without paying for torch and torchvision.
"""

from __future__ import annotations

from vitkit.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    **dict.fromkeys(("AUTO_AUGMENTS", "SOURCES", "AugmentConfig", "default_augment"), "vitkit.data.augment_config"),
    **dict.fromkeys(("GRAYSCALE_MODES", "ImageLoadError", "ImageTooLargeError", "check_image", "check_images",
                     "convert_image", "decode_image", "find_image_files", "image_header", "load_image"),
                    "vitkit.data.images"),
    **dict.fromkeys(("SeededTransformDataset", "TransformedDataset"), "vitkit.data.seeded"),
    **dict.fromkeys(("FOLDER_EXTENSIONS", "BadImageFilesError", "ClassFolder", "DataBundle", "build_data",
                     "build_folder_eval_data"), "vitkit.data.sources"),
    **dict.fromkeys(("INTERPOLATIONS", "ConvertChannels", "build_batch_mixer", "build_eval_transform",
                     "build_train_transform", "compute_mean_std", "eval_transform", "single_threaded"),
                    "vitkit.data.transforms"),
}  # fmt: skip

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
