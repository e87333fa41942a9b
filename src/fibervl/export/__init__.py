"""Exporting models for other runtimes: ``fibervl export onnx`` (:mod:`fibervl.export.onnx`).

The part names live here, free of torch, so that the command line's parser can offer them
without importing the model code."""

PARTS = ("image", "text", "detector")
FILE_NAMES = {"image": "image_encoder.onnx", "text": "text_encoder.onnx", "detector": "detector.onnx"}
