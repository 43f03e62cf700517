"""Your films before any model: decode, read folder trees and label CSVs, check, organise, split, convert to a
`datasets` dataset, cut cross-validation folds, and draw synthetic phantoms."""
