"""Decoding, PyTorch twin of `jaxml.decoding`: sampling from explicit noise and the decode loop."""
