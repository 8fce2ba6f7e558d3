"""Fast decoding backends for MusicGen: step objects that run ``generate.step`` (the whole step: all
layers, both guidance halves, sampling, the delay pattern) through ``torch.compile`` (``backends.py``),
as a CUDA graph replayed per token (``cuda_graph.py``) or in ONNX Runtime (``onnx_step.py``), and
``choose.py``, which picks one for a device (``auto``) and keeps its verdict.
"""
