"""spine-hf: grade spine radiographs into five ordinal severity grades with the Hugging Face stack.

Research software, not a medical device.

    from spine_hf import Predictor, decode_image
    for prediction in Predictor("outputs/quickstart/run/best").predict_files(["film.png", "film.dcm"]):
        print(prediction)

The package is grouped by stage: `data` (your films to a dataset), `models` (what a saved model is),
`predict` (using one), `publish` (the Hub, a Space, ONNX), `training` (accelerate), `app` (Gradio).
Importing it stays light: `Predictor` and `decode_image` are imported on first use.
"""

import logging

from spine_hf.grades import GRADE_NAMES, NUM_GRADES

__version__ = "0.1.0"
__all__ = ["GRADE_NAMES", "NUM_GRADES", "Predictor", "__version__", "decode_image", "setup_logging"]

_LAZY = {"Predictor": "spine_hf.predict.inference", "decode_image": "spine_hf.data.imaging"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spine_hf' has no attribute {name!r}")


def setup_logging() -> None:
    """What every entry point (`spine-hf`, `python -m spine_hf.train`) logs: warnings from libraries,
    information from spine-hf, one line each."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("spine_hf").setLevel(logging.INFO)
