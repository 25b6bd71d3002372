"""Export of the agent graph: ONNX with a torch parity check and signed bundles (``onnx``), int8
quantization by recipe with its fp32 agreement gate (``int8``)."""
