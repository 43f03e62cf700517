"""spine-hf's benchmarks: ratios measured side by side in one process run, printed beside their goals.

Run from a checkout (they are not part of the installed package): ``python -m bench all --data DIR``.
Modules: `report` (ratios, timers, FLOP counting), `data` (what they run on), `speed` (training step,
Predictor, convert), `quality` (time to quality), `baseline` (the usual recipe they compare against).
"""
