"""`SpeculativeConfig`: how many tokens the draft proposes per round and the sampling rule.

The original framework's `SpecDecodingConfig.draft_steps` is `k`; the `python -m
experiments.generate` flag is `--speculative-k`. `sampling` is applied identically to the target's
and the draft's logits before the ratio test (greedy when `sampling.temperature == 0`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxml.configs._validate import Config, check_positive
from jaxml.configs.decoding import SamplingConfig


@dataclass(frozen=True)
class SpeculativeConfig(Config):
    """Speculative decoding: the draft proposes `draft_steps` tokens per round (k >= 1)."""

    draft_steps: int = 4
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self) -> None:
        check_positive(self, "draft_steps")
