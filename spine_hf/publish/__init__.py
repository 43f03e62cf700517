"""A model folder leaving this machine: the Hub, a Gradio Space, an ONNX export."""
