"""Edge export: Keras -> .tflite (float32, dynamic, float16, int8) with a sidecar, a parity report, batch predict.

TensorFlow is imported inside the functions, so ``import tff_lab.export`` stays cheap.
"""

from tff_lab.export.convert import (
    QUANTIZATIONS,
    ExportResult,
    convert_keras_model,
    export_artifacts,
    export_run,
    load_run,
    parse_quantize,
    representative_examples,
)
from tff_lab.export.predict import load_input, load_predictor, predict_file, write_predictions
from tff_lab.export.tflite_model import TFLiteModel

__all__ = [
    "QUANTIZATIONS",
    "ExportResult",
    "TFLiteModel",
    "convert_keras_model",
    "export_artifacts",
    "export_run",
    "load_input",
    "load_predictor",
    "load_run",
    "parse_quantize",
    "predict_file",
    "representative_examples",
    "write_predictions",
]
