"""The speed benchmark behind ``bench.py``: our MLX dream step next to a PyTorch implementation of it.

Modules:
- ``pairs``: one model on both sides with identical weights (exported through our own exporters
  into a temporary folder), and the torch module behind each of our layer names.
- ``torch_dream``: the PyTorch reference: the engine's step and octave loop written in torch.
- ``isolated``: each side in a worker process of its own, taking turns (ours never imports torch).
- ``measure``: timers, the sgemm rate, FLOP counting, a process's own peak memory.
- ``report``: the markdown tables.

Imports torch (the reference side); dreaming itself never imports this package.
"""
