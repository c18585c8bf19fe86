"""Decoding: sampling rules from explicit noise (`sampling`) and the prefill + decode loop (`loop`)."""
