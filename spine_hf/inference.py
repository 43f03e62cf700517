"""`Predictor`: a saved model folder or Hub repo id -> grade probabilities for any radiograph.

The model is loaded once. The Predictor is the one way in for images: `canonical` reads files and
bytes with the project's decoder (so 16-bit PNG and DICOM are read correctly, unlike `pipeline()`'s
own loading) and brings images someone else opened to the same form; every image is then resized
and normalised exactly as in training (`preprocessing.Preprocessing`) and scored in batches under
`torch.inference_mode`. `predict_files` grades a list of files with a result per file, so one bad
file costs only its own line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from spine_hf.config import PREDICT_PRECISIONS
from spine_hf.grades import GRADE_NAMES, NUM_GRADES
from spine_hf.imaging import ImageDecodeError, decode_image, to_canonical
from spine_hf.model import resolve_precision
from spine_hf.model_folder import open_model_folder


@dataclass(frozen=True)
class Prediction:
    """One image's result."""

    grade: int
    grade_name: str
    # Probability of each grade, index = grade.
    probabilities: list[float]

    def to_json(self) -> dict:
        return {"grade": self.grade, "grade_name": self.grade_name, "probabilities": self.probabilities}


class Predictor:
    """Load a model once, then grade images (paths, bytes, PIL images or arrays) in batches."""

    def __init__(
        self, model: str | os.PathLike, *, device: str | None = None, batch_size: int = 32, precision: str = "fp32"
    ):
        """`precision="bf16"` runs the model under bf16 autocast: faster where bf16 is native (GPUs, CPUs
        with AVX512-BF16/AMX) but the probabilities move slightly (BENCHMARKS.md); "auto" picks bf16
        where it is native, else fp32; the default is fp32, what `evaluate` scores with."""
        if precision not in PREDICT_PRECISIONS:
            raise ValueError(f"precision must be one of {PREDICT_PRECISIONS}, not {precision!r}")
        self.folder = open_model_folder(model)
        self.preprocessing = self.folder.preprocessing
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # channels_last: the layout oneDNN and cuDNN convolutions are fastest in (as in training).
        self.model = self.folder.load_model().to(self.device).eval().to(memory_format=torch.channels_last)
        labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        if labels != list(GRADE_NAMES):
            raise ValueError(f"{model} predicts {labels}, not the five grades {list(GRADE_NAMES)}")
        self.batch_size = batch_size
        self.precision = resolve_precision(precision, self.device)  # what the model computes in: fp32 or bf16

    @staticmethod
    def canonical(image) -> Image.Image:
        """The canonical 8-bit grayscale image of a path, bytes, a PIL image or an array.

        Raises:
            ImageDecodeError: a file or bytes the decoder refuses; the message names the file and the fix.
        """
        if isinstance(image, Image.Image | np.ndarray):
            return to_canonical(image)
        return decode_image(image)

    def pixels(self, images: Sequence) -> torch.Tensor:
        """Model input for a batch: decode, resize to the model's square, normalise (N x 3 x S x S)."""
        squares = np.stack([self.preprocessing.square(self.canonical(image)) for image in images])
        batch = self.preprocessing.normalise(torch.from_numpy(squares)[:, None])
        return batch.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def logits(self, images: Sequence) -> np.ndarray:
        """Raw model outputs, N x 5."""
        out = [np.zeros((0, NUM_GRADES), dtype=np.float32)]
        for start in range(0, len(images), self.batch_size):
            batch = self.pixels(images[start : start + self.batch_size]).to(self.device)
            out.append(self._forward(batch).float().cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def probabilities(self, images: Sequence, flip_tta: bool = False) -> np.ndarray:
        """Grade probabilities, N x 5; with `flip_tta`, averaged with the horizontally flipped image."""
        out = [np.zeros((0, NUM_GRADES), dtype=np.float32)]
        for start in range(0, len(images), self.batch_size):
            batch = self.pixels(images[start : start + self.batch_size]).to(self.device)
            probs = torch.softmax(self._forward(batch).float(), dim=1)
            if flip_tta:
                flipped = self._forward(torch.flip(batch, dims=[3])).float()
                probs = (probs + torch.softmax(flipped, dim=1)) / 2
            out.append(probs.cpu().numpy())
        return np.concatenate(out)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.model(pixel_values=batch).logits

    def predict(self, images: Iterable, flip_tta: bool = False) -> list[Prediction]:
        """One `Prediction` per image."""
        return [_prediction(p) for p in self.probabilities(list(images), flip_tta=flip_tta)]

    def predict_files(self, files: Sequence, flip_tta: bool = False) -> Iterator[Prediction | ImageDecodeError]:
        """One result per file, in order: a `Prediction`, or the `ImageDecodeError` of a file the decoder
        refuses (the other files are graded as usual). `batch_size` decoded images in memory at a time."""
        for start in range(0, len(files), self.batch_size):
            results: list[Prediction | ImageDecodeError | None] = []
            images = []
            for file in files[start : start + self.batch_size]:
                try:
                    images.append(self.canonical(file))
                    results.append(None)
                except ImageDecodeError as err:
                    results.append(err)
            graded = iter(self.predict(images, flip_tta=flip_tta))
            yield from (next(graded) if result is None else result for result in results)


def _prediction(probabilities: np.ndarray) -> Prediction:
    top = int(probabilities.argmax())
    return Prediction(top, GRADE_NAMES[top], [round(float(x), 6) for x in probabilities])
