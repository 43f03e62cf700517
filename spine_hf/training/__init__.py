"""Training on accelerate: the decoded cache and augmentation, optimiser and losses, the run folder, the
loop, cross-validation and the label audit built on it."""
