"""Evaluation of generated volumes: FID and KID on MedicalNet features, MS-SSIM diversity.

See ``docs/evaluation.md`` for the protocol each number follows and how it relates to the WDM paper.
MONAI (feature network, MS-SSIM) and nibabel (NIfTI reading) are imported where they are used.
"""

from .evaluate import EvaluationReport, SetSummary, embed_volumes, evaluate, real_statistics
from .fid import (
    FID_RECOMMENDED_N,
    FeatureStatistics,
    KIDResult,
    SmallSampleWarning,
    fid_from_features,
    fid_from_statistics,
    frechet_distance,
    frechet_distance_from_features,
    kernel_inception_distance,
    mmd2_unbiased,
)
from .medicalnet import (
    FEATURE_DIM,
    MedicalNetFeatureExtractor,
    build_medicalnet_resnet50,
    load_medicalnet_state_dict,
)
from .ms_ssim import MSSSIMResult, MSSSIMSettings, ms_ssim, ms_ssim_diversity, select_pairs
from .volumes import NiftiReader, list_volumes, reader_for_format

__all__ = [
    "FEATURE_DIM",
    "FID_RECOMMENDED_N",
    "EvaluationReport",
    "FeatureStatistics",
    "KIDResult",
    "MSSSIMResult",
    "MSSSIMSettings",
    "MedicalNetFeatureExtractor",
    "NiftiReader",
    "SetSummary",
    "SmallSampleWarning",
    "build_medicalnet_resnet50",
    "embed_volumes",
    "evaluate",
    "fid_from_features",
    "fid_from_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "kernel_inception_distance",
    "list_volumes",
    "load_medicalnet_state_dict",
    "mmd2_unbiased",
    "ms_ssim",
    "ms_ssim_diversity",
    "reader_for_format",
    "real_statistics",
    "select_pairs",
]
