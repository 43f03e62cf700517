"""The usual recipe, for the benchmarks: transformers' `run_image_classification_no_trainer.py`.

This is the baseline that `python -m bench quality` and `bench train` compare against, written out
so anyone can check that it is that example script's recipe and not a strawman:

* data: ``load_dataset("imagefolder", data_files={"train": DIR/**, "validation": DIR/**})``; labels
  come from the folder names;
* ``with_transform``: every time a sample is read, PIL decodes it, ``.convert("RGB")``, then
  torchvision ``RandomResizedCrop(size)``, ``RandomHorizontalFlip()``, ``ToTensor()``,
  ``Normalize(mean, std)`` for training and ``Resize(size)``, ``CenterCrop(size)``, ``ToTensor()``,
  ``Normalize`` for validation;
* ``DataLoader(shuffle=True, collate_fn=collate_fn, batch_size=B)`` with default settings (no
  workers, no pinned memory);
* ``AdamW`` with weight decay off for biases and ``LayerNorm.weight``, ``get_scheduler("linear")``
  with no warmup (written out as `LinearDecay`, the same numbers, so that its length can be refitted),
  plain cross-entropy, fp32, ``accelerate`` for device placement;
* an evaluation pass over the validation split after every epoch.

With ``fit_epochs``, the number of epochs is refitted after each epoch to the nearest whole number that
``budget_seconds`` holds at the pace measured so far, as if the script had been given that
``--num_train_epochs``: the length of a run is chosen before it starts, and on a small shared machine no speed
probe taken before it is within 10 % (a whole-epoch probe read 47.6 img/s, the run then trained at 53).

Two things differ from the script, both in the baseline's favour or neutral: the model is the same
timm backbone the project trains (built by `spine_hf.models.build.build_model`, since the script's
pretrained ViT cannot be downloaded here), and the learning rate, weight decay, batch size and
number of epochs are the ones given to the project (the script's 5e-5 is a fine-tuning rate for a
pretrained ViT, far too low for a backbone trained from scratch). Its metric is QWK instead of
accuracy, computed on the same predictions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class BaselineRun:
    """What one baseline run did: per-epoch training seconds (no evaluation) and validation QWK."""

    images_per_second: float = 0.0
    setup_seconds: float = 0.0
    epochs: int = 0  # the length the schedule ended with
    # (cumulative training seconds, validation QWK) after each epoch
    curve: list[tuple[float, float]] = field(default_factory=list)


def load_imagefolder(train_dir: str | os.PathLike, validation_dir: str | os.PathLike):
    """The script's data loading: `imagefolder` over two folders of class sub-folders."""
    from datasets import load_dataset

    data_files = {"train": os.path.join(train_dir, "**"), "validation": os.path.join(validation_dir, "**")}
    return load_dataset("imagefolder", data_files=data_files)


def make_transforms(size, mean, std):
    """The script's torchvision transforms (the classic API, as the script imports them)."""
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        Normalize,
        RandomHorizontalFlip,
        RandomResizedCrop,
        Resize,
        ToTensor,
    )

    normalize = Normalize(mean=mean, std=std)
    train_transforms = Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor(), normalize])
    val_transforms = Compose([Resize(size), CenterCrop(size), ToTensor(), normalize])

    def preprocess_train(example_batch):
        example_batch["pixel_values"] = [train_transforms(image.convert("RGB")) for image in example_batch["image"]]
        return example_batch

    def preprocess_val(example_batch):
        example_batch["pixel_values"] = [val_transforms(image.convert("RGB")) for image in example_batch["image"]]
        return example_batch

    return preprocess_train, preprocess_val


def collate_fn(examples):
    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    labels = torch.tensor([example["label"] for example in examples])
    return {"pixel_values": pixel_values, "labels": labels}


def make_loaders(dataset, size, mean, std, batch_size: int, eval_batch_size: int):
    """Train and validation DataLoaders exactly as the script builds them."""
    from torch.utils.data import DataLoader

    preprocess_train, preprocess_val = make_transforms(size, mean, std)
    train_dataset = dataset["train"].with_transform(preprocess_train)
    eval_dataset = dataset["validation"].with_transform(preprocess_val)
    train_dataloader = DataLoader(train_dataset, shuffle=True, collate_fn=collate_fn, batch_size=batch_size)
    eval_dataloader = DataLoader(eval_dataset, collate_fn=collate_fn, batch_size=eval_batch_size)
    return train_dataloader, eval_dataloader


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The script's AdamW: no decay for parameters named like biases and LayerNorm weights."""
    no_decay = ["bias", "LayerNorm.weight"]
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
            "weight_decay": weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def train_step(model, batch, optimizer, lr_scheduler, accelerator) -> torch.Tensor:
    """One step of the script's loop (its model computes cross-entropy from `labels`; ours is timm)."""
    logits = model(batch["pixel_values"])
    loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
    accelerator.backward(loss)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad()
    return loss


class LinearDecay:
    """`get_scheduler("linear")` without warmup: the factor falls from 1 to 0 over `total` steps (a mutable
    length, which transformers' closure is not)."""

    def __init__(self, total: int):
        self.total = total

    def __call__(self, step: int) -> float:
        return max(0.0, (self.total - step) / max(1, self.total))


def run_baseline(
    model_factory: Callable[[], tuple[torch.nn.Module, object]],
    train_dir: str | os.PathLike,
    validation_dir: str | os.PathLike,
    *,
    batch_size: int,
    lr: float,
    weight_decay: float,
    epochs: int,
    budget_seconds: float,
    score: Callable[[np.ndarray, np.ndarray], float],
    seed: int = 0,
    fit_epochs: bool = False,
) -> BaselineRun:
    """Train with the script's recipe until `epochs` (refitted after each epoch with `fit_epochs`) or
    `budget_seconds` of training, scoring each epoch."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    setup_start = time.perf_counter()
    set_seed(seed)
    accelerator = Accelerator()
    model, preprocessing = model_factory()
    dataset = load_imagefolder(train_dir, validation_dir)
    train_dataloader, eval_dataloader = make_loaders(
        dataset, preprocessing.size, preprocessing.mean, preprocessing.std, batch_size, 2 * batch_size
    )
    optimizer = make_optimizer(model, lr, weight_decay)
    steps_per_epoch = len(train_dataloader)
    schedule = LinearDecay(epochs * steps_per_epoch)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )
    run = BaselineRun(setup_seconds=time.perf_counter() - setup_start)
    trained, images, done = 0.0, 0, 0
    while done < epochs:
        model.train()
        start = time.perf_counter()
        for batch in train_dataloader:
            train_step(model, batch, optimizer, lr_scheduler, accelerator)
            images += len(batch["labels"])
            if trained + time.perf_counter() - start > budget_seconds:
                break
        trained += time.perf_counter() - start
        model.eval()
        predictions, references = [], []
        for batch in eval_dataloader:
            with torch.no_grad():
                logits = model(batch["pixel_values"])
            gathered = accelerator.gather_for_metrics((logits.argmax(dim=-1), batch["labels"]))
            predictions.append(gathered[0].cpu().numpy())
            references.append(gathered[1].cpu().numpy())
        run.curve.append((trained, score(np.concatenate(predictions), np.concatenate(references))))
        done += 1
        if trained > budget_seconds:
            break
        if fit_epochs:  # the nearest whole number of epochs at the pace so far; never fewer than are done
            epochs = max(done, round(budget_seconds * images / trained / len(dataset["train"])))
            schedule.total = epochs * steps_per_epoch
    run.images_per_second = images / max(trained, 1e-9)
    run.epochs = epochs
    return run
