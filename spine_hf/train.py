"""One training run, launched as accelerate expects a script (the library code is `spine_hf.training.loop`).

accelerate launch -m spine_hf.train --config_path configs/quickstart.yaml [--section.key=value ...]
python -m spine_hf.train ...        # one process, the same as `spine-hf train ...`
"""

from __future__ import annotations

import sys
from pathlib import Path

from spine_hf.config import parse_config, report_error


def main(argv: list[str] | None = None) -> int:
    """Parse the configuration, train, print the best (and test) metrics and the model folder."""
    from spine_hf import setup_logging
    from spine_hf.training.checkpoints import BEST_DIR
    from spine_hf.training.loop import train

    setup_logging()
    try:
        cfg = parse_config(argv)
        result = train(cfg)
    except (ValueError, OSError) as err:  # a ConfigError is a ValueError
        return report_error(err)
    for split, metrics in result.items():
        if isinstance(metrics, dict) and "qwk" in metrics:
            print(f"{split}: QWK {metrics['qwk']:.4f}  accuracy {metrics['accuracy']:.4f}  MAE {metrics['mae']:.4f}")
    print(f"model folder: {Path(cfg.train.output_dir) / BEST_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
