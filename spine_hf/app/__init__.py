"""The Gradio app: grade, explain, publish."""
