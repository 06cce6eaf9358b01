"""Data for vitkit: image loading, transforms and augmentation, and the data sets it trains on."""

from vitkit.data.images import (
    GRAYSCALE_MODES,
    ImageLoadError,
    ImageTooLargeError,
    convert_image,
    decode_image,
    image_header,
    load_image,
)
from vitkit.data.seeded import SeededTransformDataset, TransformedDataset
from vitkit.data.sources import FOLDER_EXTENSIONS, SOURCES, ClassFolder, DataBundle, build_data, build_folder_eval_data
from vitkit.data.transforms import (
    AUTO_AUGMENTS,
    INTERPOLATIONS,
    AugmentConfig,
    ConvertChannels,
    build_batch_mixer,
    build_eval_transform,
    build_train_transform,
    compute_mean_std,
    default_augment,
    eval_transform,
    single_threaded,
)

__all__ = [
    "AUTO_AUGMENTS",
    "FOLDER_EXTENSIONS",
    "GRAYSCALE_MODES",
    "INTERPOLATIONS",
    "SOURCES",
    "AugmentConfig",
    "ClassFolder",
    "ConvertChannels",
    "DataBundle",
    "ImageLoadError",
    "ImageTooLargeError",
    "SeededTransformDataset",
    "TransformedDataset",
    "build_batch_mixer",
    "build_data",
    "build_eval_transform",
    "build_folder_eval_data",
    "build_train_transform",
    "compute_mean_std",
    "convert_image",
    "decode_image",
    "default_augment",
    "eval_transform",
    "image_header",
    "load_image",
    "single_threaded",
]
