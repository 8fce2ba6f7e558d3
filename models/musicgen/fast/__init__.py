"""Fast decoding backends for MusicGen: the whole step as one capturable function.

``step.py`` holds the step (all layers, both guidance halves, sampling, the delay pattern) with the
position as a device tensor; ``backends.py`` runs it eagerly, through ``torch.compile``, or as a CUDA
graph replayed per step (``cuda_graph.py``). ``FastGeneration`` is ``Generation`` driven by one of them.
"""
