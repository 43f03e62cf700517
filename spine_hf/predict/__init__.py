"""Using a saved model: grade images (`Predictor`), score a split, calibrate, read out-of-fold predictions,
explain a grade with Grad-CAM."""
