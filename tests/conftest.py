"""Test-suite settings."""

import torch

# The tests use small tensors, where one thread is as fast as two; and with two OpenMP threads a
# test slows down many times over whenever the other core is busy (a subprocess, another job).
torch.set_num_threads(1)
