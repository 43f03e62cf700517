"""`Predictor`: a saved model folder or Hub repo id -> grade probabilities for any radiograph.

The model is loaded once. The Predictor is the one way in for images: `canonical` reads files and
bytes with the project's decoder (so 16-bit PNG and DICOM are read correctly, unlike `pipeline()`'s
own loading) and brings images someone else opened to the same form; every image is then resized
and normalised exactly as in training (`preprocessing.Preprocessing`) and scored in batches: by the
PyTorch weights (under `torch.inference_mode`) or, for a folder from `spine-hf export`, by ONNX
Runtime, which needs neither torch nor transformers. `predict_files` grades a list of files with a
result per file, so one bad file costs only its own line.

A fold ensemble's folder (`spine-hf cv`) is graded by all its members: the probabilities are the mean
of theirs (and the logits their logarithm), the features for the referral and Grad-CAM those of the
folder's own network.

Where `spine-hf calibrate` stored them in the folder, every prediction also carries its conformal
grade range (`conformal.GradeRanges`) and whether the image looks like the training radiographs
(`referral.Referral`, from the classifier's input features); a folder without them predicts exactly
as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from spine_hf.config import BACKENDS, PREDICT_PRECISIONS
from spine_hf.data.imaging import ImageDecodeError, decode_image, to_canonical
from spine_hf.grades import GRADE_NAMES, NUM_GRADES
from spine_hf.models.folder import open_model_folder
from spine_hf.models.referral import REFERRAL_MESSAGE


@dataclass(frozen=True)
class Prediction:
    """One image's result."""

    grade: int
    grade_name: str
    # Probability of each grade, index = grade.
    probabilities: list[float]
    # Lowest and highest grade of the conformal range, and the share of images whose range holds their
    # true grade; None when the model folder has no grade ranges.
    grade_range: tuple[int, int] | None = None
    coverage: float | None = None
    # Distance of the image's features to the training images', the threshold, and whether it is within;
    # None when the model folder has no referral.
    ood_score: float | None = None
    ood_threshold: float | None = None
    in_distribution: bool | None = None

    def to_json(self) -> dict:
        out = {"grade": self.grade, "grade_name": self.grade_name, "probabilities": self.probabilities}
        if self.grade_range is not None:
            out |= {"grade_range": list(self.grade_range), "coverage": self.coverage}
        if self.in_distribution is not None:
            out |= {"in_distribution": self.in_distribution, "ood_score": self.ood_score,
                    "ood_threshold": self.ood_threshold}  # fmt: skip
            if not self.in_distribution:
                out["warning"] = REFERRAL_MESSAGE
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, row by row (float32 in, float32 out)."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


class Outputs(NamedTuple):
    """What the model gives for N images."""

    # N x 5, of each image as it is.
    logits: np.ndarray
    # N x 5; averaged with the mirrored image's under flip TTA.
    probabilities: np.ndarray
    # N x D: what the classifier layer receives, of each image as it is; None unless asked for.
    features: np.ndarray | None


class Predictor:
    """Load a model once, then grade images (paths, bytes, PIL images or arrays) in batches."""

    def __init__(self, model: str | os.PathLike, *, backend: str | None = None, device: str | None = None,
                 batch_size: int = 32, precision: str = "fp32"):  # fmt: skip
        """`backend="torch"` runs the folder's PyTorch weights; `"onnx"` runs its `model.onnx` (written by
        `spine-hf export`) with ONNX Runtime on the CPU and imports neither torch nor transformers; the
        default is onnx for a folder that holds only the graph, else torch. Both give the same outputs.

        `precision="bf16"` (torch only) runs the model under bf16 autocast: faster where bf16 is native
        (GPUs, CPUs with AVX512-BF16/AMX) but the probabilities move slightly (BENCHMARKS.md); "auto"
        picks bf16 where it is native, else fp32; the default is fp32, what `evaluate` scores with."""
        if precision not in PREDICT_PRECISIONS:
            raise ValueError(f"precision must be one of {PREDICT_PRECISIONS}, not {precision!r}")
        self.folder = open_model_folder(model)
        if list(self.folder.labels) != list(GRADE_NAMES):
            raise ValueError(f"{model} predicts {list(self.folder.labels)}, not the five grades {list(GRADE_NAMES)}")
        if backend is None:
            backend = "onnx" if self.folder.has_onnx and not self.folder.has_weights else "torch"
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.backend = backend
        self.preprocessing = self.folder.preprocessing
        self.batch_size = batch_size
        self.grade_ranges = self.folder.grade_ranges
        self.referral = self.folder.referral
        # torch: the folder's own network, its device and what it computes in (fp32 or bf16); None with onnx.
        self.model = self.device = self.precision = self.session = None
        # torch: every network whose probabilities are averaged ([self.model] unless the folder is an ensemble,
        # whose own network is one of them or, distilled from them, not).
        self.members: list = []
        if backend == "onnx":
            if precision == "bf16" or device not in (None, "cpu"):
                raise ValueError("the onnx backend runs the exported graph as it is, on the CPU: "
                                 "precision bf16 and other devices are for the torch backend")  # fmt: skip
            self.session = self.folder.onnx_session()
            return
        import torch

        from spine_hf.models.build import resolve_precision

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

        # channels_last: the layout oneDNN and cuDNN convolutions are fastest in (as in training).
        def load(folder):
            return folder.load_model().to(self.device).eval().to(memory_format=torch.channels_last)

        self.model = load(self.folder)
        members = self.folder.member_folders()
        self.members = [self.model if member is self.folder else load(member) for member in members] or [self.model]
        self.precision = resolve_precision(precision, self.device)

    @staticmethod
    def canonical(image) -> Image.Image:
        """The canonical 8-bit grayscale image of a path, bytes, a PIL image or an array.

        Raises:
            ImageDecodeError: a file or bytes the decoder refuses; the message names the file and the fix.
        """
        if isinstance(image, Image.Image | np.ndarray):
            return to_canonical(image)
        return decode_image(image)

    def pixels(self, images: Sequence) -> np.ndarray:
        """Model input for a batch: decode, resize to the model's input shape, normalise (N x 3 x H x W float32)."""
        squares = np.stack([self.preprocessing.square(self.canonical(image)) for image in images])
        return self.preprocessing.normalise_array(squares)

    def logits(self, images: Sequence) -> np.ndarray:
        """Raw model outputs, N x 5 (for a fold ensemble, the log of its members' mean probabilities)."""
        return self.outputs(images).logits

    def probabilities(self, images: Sequence, flip_tta: bool = False) -> np.ndarray:
        """Grade probabilities, N x 5; with `flip_tta`, averaged with the horizontally flipped image."""
        return self.outputs(images, flip_tta=flip_tta).probabilities

    def features(self, images: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """The classifier's input (penultimate features, N x D) and the logits (N x 5), from one pass."""
        outputs = self.outputs(images, features=True)
        return outputs.features, outputs.logits

    def outputs(self, images: Sequence, *, flip_tta: bool = False, features: bool = False) -> Outputs:
        """Logits, probabilities and (with `features`) the feature vectors of `images`, `batch_size` at a time."""
        out: dict[str, list[np.ndarray]] = {"logits": [], "probabilities": [], "features": []}
        run = self._run_onnx if self.backend == "onnx" else self._run_torch
        for start in range(0, len(images), self.batch_size):
            batch = self.pixels(images[start : start + self.batch_size])
            logits, vectors = run(batch, features)
            probabilities = softmax(logits)
            if flip_tta:
                mirrored, _ = run(np.ascontiguousarray(batch[..., ::-1]), False)
                probabilities = (probabilities + softmax(mirrored)) / 2
            out["logits"].append(logits)
            out["probabilities"].append(probabilities)
            if features:
                out["features"].append(vectors)
        empty = np.zeros((0, NUM_GRADES), dtype=np.float32)
        vectors = None
        if features:  # no images: no feature width to give either
            vectors = np.concatenate(out["features"]) if out["features"] else np.zeros((0, 0), np.float32)
        return Outputs(np.concatenate([empty, *out["logits"]]), np.concatenate([empty, *out["probabilities"]]), vectors)

    def _run_torch(self, batch: np.ndarray, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, features or None) of one batch; the features are what the classifier layer of the folder's
        own network receives. For an ensemble the logits are the log of the members' mean probabilities."""
        import torch

        captured: list[torch.Tensor] = []
        hook = None
        if features:
            classifier = self.folder.classifier_module(self.model)
            hook = classifier.register_forward_pre_hook(lambda _module, args: captured.append(args[0].flatten(1)))
        try:
            with torch.inference_mode():
                pixels = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    outputs = [member(pixels).float() for member in self.members]
                    if features and not any(member is self.model for member in self.members):
                        self.model(pixels)  # an own network outside the mean still gives the features
                logits = outputs[0]
                if len(outputs) > 1:
                    logits = torch.stack([output.softmax(dim=1) for output in outputs]).mean(dim=0).log()
                vectors = captured.pop().float().cpu().numpy() if features else None
                return logits.cpu().numpy(), vectors
        finally:
            if hook is not None:
                hook.remove()

    def _run_onnx(self, batch: np.ndarray, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The same from the exported graph, whose outputs are `logits` and `features`."""
        found = self.session.run(["logits", "features"] if features else ["logits"], {"pixel_values": batch})
        return found[0], (found[1] if features else None)

    def predict(self, images: Iterable, flip_tta: bool = False) -> list[Prediction]:
        """One `Prediction` per image, with its grade range and referral where the folder has them."""
        images = list(images)
        if not images:
            return []
        _, probabilities, features = self.outputs(images, flip_tta=flip_tta, features=self.referral is not None)
        ranges = self.grade_ranges.ranges(probabilities) if self.grade_ranges else [None] * len(probabilities)
        scores = self.referral.scores(features) if self.referral else [None] * len(probabilities)
        return [self._prediction(p, r, s) for p, r, s in zip(probabilities, ranges, scores, strict=True)]

    def _prediction(self, probabilities: np.ndarray, grade_range, ood_score) -> Prediction:
        top = int(probabilities.argmax())
        extra = {}
        if grade_range is not None:
            extra |= {"grade_range": (int(grade_range[0]), int(grade_range[1])), "coverage": self.grade_ranges.coverage}
        if ood_score is not None:
            extra |= {"ood_score": round(float(ood_score), 4), "ood_threshold": round(self.referral.threshold, 4),
                      "in_distribution": not bool(self.referral.refer(ood_score))}  # fmt: skip
        return Prediction(top, GRADE_NAMES[top], [round(float(x), 6) for x in probabilities], **extra)

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
