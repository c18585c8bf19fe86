"""Decoding configs: the KV-cache policy of a decode loop and the next-token sampling rule.

The original framework's names: `use_kv_cache`, `expanding_context`, `max_seq_len`; `window` is the
sliding-window size used when `expanding_context=False`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxml.configs._validate import Config, check_positive, check_range, fail


@dataclass(frozen=True)
class DecodeConfig(Config):
    """How a decode loop keeps keys and values.

    `use_kv_cache=False` recomputes the whole prefix every step (the reference). With the cache,
    `expanding_context=True` keeps every token (capacity `max_seq_len`, default: prompt + steps);
    `expanding_context=False` keeps a ring buffer of `max_seq_len` slots (default: the larger of
    `window` and the prompt) in which each query sees the last `window` positions.
    """

    use_kv_cache: bool = True
    expanding_context: bool = True
    window: int | None = None
    max_seq_len: int | None = None

    def validate(self) -> None:
        check_positive(self, "window", "max_seq_len")
        if self.expanding_context and self.window is not None:
            fail(self, "window", self.window, "needs expanding_context=False (a sliding window)")
        if not self.expanding_context and self.window is None:
            fail(self, "window", None, "expanding_context=False needs a window size")
        if (
            self.window is not None
            and self.max_seq_len is not None
            and self.window > self.max_seq_len
        ):
            fail(
                self,
                "window",
                self.window,
                f"must be <= max_seq_len={self.max_seq_len} (a window larger than the cache)",
            )

    def cache_len(self, prompt_len: int, steps: int) -> int:
        """Cache slots for `steps` new tokens after a `prompt_len` prompt under this policy."""
        if self.max_seq_len is not None:
            return self.max_seq_len
        if self.window is not None:
            return max(self.window, prompt_len)
        return prompt_len + steps - 1


@dataclass(frozen=True)
class SamplingConfig(Config):
    """Next-token rule on logits: greedy when `temperature == 0`, else sample from the softmax of
    `logits / temperature` restricted to the `top_k` most likely tokens, then to the smallest set of
    mass `>= top_p`, then to tokens of probability `>= min_p · max probability` (each optional)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def validate(self) -> None:
        if self.temperature < 0:
            fail(self, "temperature", self.temperature, "must be >= 0 (0 = greedy)")
        check_positive(self, "top_k")
        if self.top_p is not None:
            check_range(self, "top_p", 0.0, 1.0, "(]")
        if self.min_p is not None:
            check_range(self, "min_p", 0.0, 1.0, "[]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
