"""Training on Ray Train: prepared cases, per-profile recipes, the worker loop, the driver and the
whole train -> evaluate -> register job (see docs/training.md).

Importing this package imports torch but not Ray; Ray is imported when a run starts.

    >>> from lungsearch.training import train_and_evaluate
    >>> out = train_and_evaluate(load_profile("cxr-cnn"))
"""

from lungsearch.training.cases import CaseTable, augment_images, data_fingerprint, prepare_cases, study_radiomics
from lungsearch.training.inference import Predictions, forward_cases, predict
from lungsearch.training.pipeline import (
    Dataset,
    KFoldOutput,
    Splits,
    TrainOutput,
    evaluate_registered,
    load_dataset,
    make_folds,
    make_splits,
    reproduce_profile,
    run_kfold,
    train_and_evaluate,
)
from lungsearch.training.recipes import Stage, Variant, stages_for, variants
from lungsearch.training.trainer import FitResult, TrainingError, default_run_name, fit

__all__ = [
    "CaseTable",
    "Dataset",
    "FitResult",
    "KFoldOutput",
    "Predictions",
    "Splits",
    "Stage",
    "TrainOutput",
    "TrainingError",
    "Variant",
    "augment_images",
    "data_fingerprint",
    "default_run_name",
    "evaluate_registered",
    "fit",
    "forward_cases",
    "load_dataset",
    "make_folds",
    "make_splits",
    "predict",
    "prepare_cases",
    "reproduce_profile",
    "run_kfold",
    "stages_for",
    "study_radiomics",
    "train_and_evaluate",
    "variants",
]
