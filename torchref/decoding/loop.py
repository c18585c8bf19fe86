"""The decode loop, PyTorch twin of `jaxml.decoding.loop`: prefill, then one cached step per token.

Same contract, eager: `step(cache, inputs [batch, n, ...], positions [batch, n], mask [batch, n,
cache_len]) -> (outputs, cache)` (the module holds its parameters), `select(last_outputs, step_index)
-> next_inputs` (step 0 = prefill). Right-padded ragged prompts; a Python loop that stops early
when `stop_early` and every row is done. Runs under `torch.no_grad()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from torchref.layers import kv_cache
from torchref.layers.kv_cache import KVCache

StepFn = Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]]
SelectFn = Callable[[torch.Tensor, int], torch.Tensor]


class DecodeResult(NamedTuple):
    outputs: torch.Tensor  # [batch, steps, ...]; `pad_value` once a row is done
    num_generated: torch.Tensor  # int32 [batch]
    cache: Any


def layer_caches(cache: Any) -> list[KVCache]:
    """Every `KVCache` in a (nested tuple / NamedTuple) model cache, in order."""
    if isinstance(cache, KVCache):
        return [cache]
    if isinstance(cache, tuple | list):
        return [c for item in cache for c in layer_caches(item)]
    return []


def map_caches(fn: Callable[[KVCache], KVCache], cache: Any) -> Any:
    """Apply `fn` to every `KVCache` in a model cache."""
    if isinstance(cache, KVCache):
        return fn(cache)
    if isinstance(cache, tuple) and hasattr(cache, "_fields"):
        return type(cache)(*(map_caches(fn, item) for item in cache))
    if isinstance(cache, tuple | list):
        return type(cache)(map_caches(fn, item) for item in cache)
    return cache


def run_step(step: StepFn, cache: Any, inputs: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """One model call on `inputs [batch, n, ...]`: positions and mask built once for all layers."""
    first, n = layer_caches(cache)[0], inputs.shape[1]
    return step(cache, inputs, kv_cache.next_positions(first, n), kv_cache.attention_mask(first, n))


def _check(cache: Any, prompt: torch.Tensor, prompt_lengths: torch.Tensor, steps: int) -> None:
    caches = layer_caches(cache)
    if not caches:
        raise ValueError("the model cache holds no KVCache")
    first = caches[0]
    batch, prompt_len = prompt.shape[:2]
    if prompt_len < 1:
        raise ValueError("empty prompt: decoding needs at least one prompt position per row")
    if steps < 1:
        raise ValueError(f"steps={steps} is invalid: must be >= 1")
    if tuple(prompt_lengths.shape) != (batch,) or tuple(first.lengths.shape) != (batch,):
        raise ValueError(
            f"prompt_lengths {tuple(prompt_lengths.shape)} and cache batch "
            f"{tuple(first.lengths.shape)} must be [batch={batch}]"
        )
    if prompt_len > first.cache_len:
        raise ValueError(
            f"prompt of {prompt_len} positions is longer than the cache (cache_len={first.cache_len})"
        )
    if first.window is None and prompt_len + steps - 1 > first.cache_len:
        raise ValueError(
            f"a {prompt_len}-position prompt and {steps} new tokens need cache_len >= "
            f"{prompt_len + steps - 1} (expanding context), the cache holds {first.cache_len}"
        )
    if bool(((prompt_lengths < 1) | (prompt_lengths > prompt_len)).any()):
        raise ValueError(
            f"prompt_lengths must be in [1, {prompt_len}], got {prompt_lengths.tolist()}"
        )
    held = int(first.lengths.max())
    if first.window is None and held + prompt_len + steps - 1 > first.cache_len:
        raise ValueError(
            f"the cache already holds {held} positions: {prompt_len} more and {steps} new "
            f"tokens need cache_len >= {held + prompt_len + steps - 1}, it has {first.cache_len}"
        )


@torch.no_grad()
def decode(
    step: StepFn,
    cache: Any,
    prompt: torch.Tensor,
    prompt_lengths: torch.Tensor,
    *,
    steps: int,
    select: SelectFn,
    eos_id: int | None = None,
    budgets: torch.Tensor | None = None,
    stop_early: bool = False,
    pad_value: float = 0,
) -> DecodeResult:
    """Generate `steps` next inputs per row after the prompt (see the module docstring)."""
    _check(cache, prompt, prompt_lengths, steps)
    lengths = prompt_lengths.to(device=prompt.device, dtype=torch.int64)
    budgets = torch.full_like(lengths, steps) if budgets is None else budgets.to(lengths.device)

    def finished(current: torch.Tensor, count: torch.Tensor, cache: Any) -> torch.Tensor:
        done = (count >= budgets) | kv_cache.is_full(layer_caches(cache)[0])
        return done if eos_id is None else done | (current == eos_id)

    held = layer_caches(cache)[0].lengths
    outputs, cache = run_step(step, cache, prompt)
    index = (lengths - 1).view(-1, *([1] * (outputs.ndim - 1))).expand(-1, 1, *outputs.shape[2:])
    last = outputs.gather(1, index)[:, 0]
    kept = (held + lengths).to(torch.int32)
    cache = map_caches(lambda c: kv_cache.truncate(c, kept), cache)
    current = select(last, 0)
    buffer = torch.full(
        (current.shape[0], steps, *current.shape[1:]),
        pad_value,
        dtype=current.dtype,
        device=current.device,
    )
    buffer[:, 0] = current
    count = torch.ones_like(lengths, dtype=torch.int32)
    done = finished(current, count, cache)
    for i in range(1, steps):
        if stop_early and bool(done.all()):
            break
        outputs, cache = run_step(step, cache, current[:, None])
        current = select(outputs[:, 0], i)
        live = ~done
        row = live.view(-1, *([1] * (current.ndim - 1)))
        buffer[:, i] = torch.where(row, current, torch.full_like(current, pad_value))
        count = count + live.int()
        done = done | finished(current, count, cache)
    return DecodeResult(buffer, count, cache)
