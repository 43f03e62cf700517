"""spine-hf demo app (Gradio): `python app.py --model outputs/quickstart/run/best [--port 7860]`.

Research use only, not a medical device. The app itself lives in `spine_hf/app/demo.py`; importing this
file starts nothing.
"""

from spine_hf.app.demo import build_app, main

__all__ = ["build_app", "main"]

if __name__ == "__main__":
    main()
