"""PyTorch reference implementations of zoo models that torchvision does not provide.

Torch side only: the exporters' ``--random-init``, the parity tests and the benchmarks use them;
``models`` never imports this package, and dreaming never loads torch. Each reference takes the
state-dict keys of the checkpoint its model's weights come from, so ``load_state_dict`` of the
real file works with ``strict=True`` and proves the port's configuration against it.
"""
