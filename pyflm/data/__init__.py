"""Landmark data: readers, schemes, splits, crops and augmentation.

All landmarks are float64 NumPy arrays [N, 2] of 0-based (x, y) pixels with
pixel centres at integers (see pyflm's package docstring).
"""

from pyflm.data.augment import (
    PAPER1,
    PAPER2,
    AugmentConfig,
    AugmentParams,
    AugmentResult,
    augment,
    augment_geometry,
    augmentation_matrix,
    color_jitter,
    occlude,
    sample_params,
)
from pyflm.data.crops import (
    BoxToSquare,
    Crop,
    compose_affine,
    crop_matrix,
    fit_box_to_square,
    invert_affine,
    similarity_matrix,
    square_from_landmarks,
    tight_box,
    transform_points,
    warp_image,
)
from pyflm.data.readers import (
    WFLW_ATTRIBUTES,
    CocoFace,
    WFLWAnnotation,
    parse_wflw_line,
    read_aflw2000_mat,
    read_coco_keypoints,
    read_cofw_mat,
    read_landmarks_csv,
    read_pts,
    read_wflw_annotations,
    write_pts,
)
from pyflm.data.schemes import AFLW19, COFW29, IBUG68, SCHEMES, WFLW98, LandmarkScheme, get_scheme
from pyflm.data.splits import SPLITS, Sample, default_data_root, load_folder, load_split, split_names

__all__ = [
    # readers
    "read_pts", "write_pts", "read_landmarks_csv", "WFLWAnnotation", "WFLW_ATTRIBUTES",
    "parse_wflw_line", "read_wflw_annotations", "read_cofw_mat", "read_aflw2000_mat",
    "CocoFace", "read_coco_keypoints",
    # schemes
    "LandmarkScheme", "SCHEMES", "get_scheme", "IBUG68", "WFLW98", "COFW29", "AFLW19",
    # splits
    "Sample", "SPLITS", "split_names", "default_data_root", "load_folder", "load_split",
    # crops
    "square_from_landmarks", "tight_box", "BoxToSquare", "fit_box_to_square", "crop_matrix", "similarity_matrix",
    "invert_affine", "compose_affine", "transform_points", "warp_image", "Crop",
    # augmentation
    "AugmentConfig", "PAPER1", "PAPER2", "AugmentParams", "AugmentResult", "sample_params",
    "augmentation_matrix", "augment_geometry", "color_jitter", "occlude", "augment",
]
