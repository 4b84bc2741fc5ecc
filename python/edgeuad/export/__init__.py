"""Training-side export: torch -> ONNX (`export.onnx`), explicit INT8 Q/DQ (`export.quantize`) and
ONNX -> TensorRT engines (`export.tensorrt`).

Nothing is imported here on purpose: `export.onnx` needs torch, while `export.tensorrt` must stay
importable on a Jetson that has only tensorrt + numpy.  Import the submodule you need.
"""
