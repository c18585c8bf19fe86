"""Framework-neutral numpy data: synthetic tasks, image loaders and a deterministic batcher.

Both backends read these arrays (torchref imports this package directly).
"""
