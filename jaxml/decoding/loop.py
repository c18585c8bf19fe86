"""The decode loop: prefill the whole prompt in one call, then one cached step per new token.

Model-agnostic. The model is a `step` function
    step(params, cache, inputs [batch, n, ...], positions [batch, n] int32,
         mask [batch, n, cache_len] bool) -> (outputs [batch, n, ...], cache)
where `cache` is any pytree holding one `KVCache` per attention layer (and anything else the model
keeps, e.g. cross-attention keys/values); every `KVCache` in it has the same bookkeeping, so the
loop builds `positions` and `mask` once per step from the first one. `select(last_outputs [batch,
...], key) -> next_inputs [batch, ...]` turns the outputs at the last position into the next input:
a sampled token (`sampling.sampler`) or a fed-back prediction (continuous models).

Ragged batches are RIGHT-padded: `prompt [batch, P, ...]` with `prompt_lengths [batch]`. The
prefill writes all `P` positions, then `kv_cache.truncate` rolls each row back to its length, so
every row keeps its true positions `0, 1, ...` (rotary/sinusoidal positions need no offset) and
no cache slot is lost to padding; a row's first new token comes from its own last prompt position.
Left padding would instead shift every row's positions or waste slots. The cache may already hold
earlier context (a conversation continued): the prompt goes after it.

Step `i` (0 = prefill) selects with `jax.random.fold_in(key, i)`. Everything is static-shaped and
traced once: `lax.scan` over `steps - 1` decode steps, or, with `stop_early`, a `lax.while_loop`
that stops when every row is done (EOS emitted, `budgets` reached, or an expanding cache full).
Call `decode` inside your own `jax.jit` (static: `step`, `select`, `steps`, `eos_id`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from jaxml.layers import kv_cache
from jaxml.layers.kv_cache import KVCache

StepFn = Callable[[Any, Any, Array, Array, Array], tuple[Array, Any]]
SelectFn = Callable[[Array, Array], Array]


class DecodeResult(NamedTuple):
    outputs: Array  # [batch, steps, ...] the selected next inputs; `pad_value` once a row is done
    num_generated: Array  # int32 [batch]: entries of `outputs` each row produced (EOS included)
    cache: Any  # the model cache after the last step


class _State(NamedTuple):
    i: Array  # int32 []: the step that produced `current`
    cache: Any
    current: Array  # [batch, ...] the latest selected inputs
    done: Array  # bool [batch]
    generated: Array  # int32 [batch]
    buffer: Array  # [batch, steps, ...]


def layer_caches(cache: Any) -> list[KVCache]:
    """Every `KVCache` in a model cache pytree, in tree order."""
    leaves = jax.tree_util.tree_leaves(cache, is_leaf=lambda x: isinstance(x, KVCache))
    return [leaf for leaf in leaves if isinstance(leaf, KVCache)]


def map_caches(fn: Callable[[KVCache], KVCache], cache: Any) -> Any:
    """Apply `fn` to every `KVCache` in a model cache pytree."""
    is_cache = lambda x: isinstance(x, KVCache)  # noqa: E731
    return jax.tree_util.tree_map(lambda x: fn(x) if is_cache(x) else x, cache, is_leaf=is_cache)


def run_step(step: StepFn, params: Any, cache: Any, inputs: Array) -> tuple[Array, Any]:
    """One model call on `inputs [batch, n, ...]`: positions and mask built once for all layers."""
    first, n = layer_caches(cache)[0], inputs.shape[1]
    positions, mask = kv_cache.next_positions(first, n), kv_cache.attention_mask(first, n)
    return step(params, cache, inputs, positions, mask)


def _check(cache: Any, prompt: Array, prompt_lengths: Array, steps: int) -> None:
    caches = layer_caches(cache)
    if not caches:
        raise ValueError("the model cache holds no KVCache")
    first = caches[0]
    batch, prompt_len = prompt.shape[:2]
    if prompt_len < 1:
        raise ValueError("empty prompt: decoding needs at least one prompt position per row")
    if steps < 1:
        raise ValueError(f"steps={steps} is invalid: must be >= 1")
    if prompt_lengths.shape != (batch,) or first.lengths.shape != (batch,):
        raise ValueError(
            f"prompt_lengths {prompt_lengths.shape} and cache batch {first.lengths.shape} must be "
            f"[batch={batch}]"
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
    if not isinstance(prompt_lengths, jax.core.Tracer):
        lengths = np.asarray(prompt_lengths)
        if np.any((lengths < 1) | (lengths > prompt_len)):
            raise ValueError(f"prompt_lengths must be in [1, {prompt_len}], got {lengths}")
    if first.window is None and not isinstance(first.lengths, jax.core.Tracer):
        held = int(np.max(np.asarray(first.lengths)))
        if held + prompt_len + steps - 1 > first.cache_len:
            raise ValueError(
                f"the cache already holds {held} positions: {prompt_len} more and {steps} new "
                f"tokens need cache_len >= {held + prompt_len + steps - 1}, it has {first.cache_len}"
            )


def prefill(
    step: StepFn, params: Any, cache: Any, prompt: Array, prompt_lengths: Array
) -> tuple[Array, Any]:
    """Run the whole right-padded prompt in one call, after whatever the cache already holds;
    `-> (outputs at each row's last prompt position [batch, ...], cache holding each row's
    earlier context + its prompt_lengths tokens)`."""
    held = layer_caches(cache)[0].lengths
    outputs, cache = run_step(step, params, cache, prompt)
    last = jnp.take_along_axis(
        outputs, (prompt_lengths - 1).reshape(-1, *([1] * (outputs.ndim - 1))), axis=1
    )[:, 0]
    return last, map_caches(lambda c: kv_cache.truncate(c, held + prompt_lengths), cache)


def decode(
    step: StepFn,
    params: Any,
    cache: Any,
    prompt: Array,
    prompt_lengths: Array,
    *,
    steps: int,
    select: SelectFn,
    key: Array,
    eos_id: int | None = None,
    budgets: Array | None = None,
    stop_early: bool = False,
    pad_value: float | int = 0,
) -> DecodeResult:
    """Generate `steps` next inputs per row after the prompt (see the module docstring)."""
    _check(cache, prompt, prompt_lengths, steps)
    prompt_lengths = prompt_lengths.astype(jnp.int32)
    budgets = jnp.full(prompt_lengths.shape, steps, jnp.int32) if budgets is None else budgets

    def finished(current: Array, count: Array, cache: Any) -> Array:
        done = (count >= budgets) | kv_cache.is_full(layer_caches(cache)[0])
        return done if eos_id is None else done | (current == eos_id)

    last, cache = prefill(step, params, cache, prompt, prompt_lengths)
    current = select(last, jax.random.fold_in(key, 0))
    buffer = jnp.full((current.shape[0], steps, *current.shape[1:]), pad_value, current.dtype)
    count = jnp.ones(prompt_lengths.shape, jnp.int32)
    state = _State(
        i=jnp.zeros((), jnp.int32),
        cache=cache,
        current=current,
        done=finished(current, count, cache),
        generated=count,
        buffer=buffer.at[:, 0].set(current),
    )

    def body(state: _State) -> _State:
        outputs, cache = run_step(step, params, state.cache, state.current[:, None])
        i = state.i + 1
        current = select(outputs[:, 0], jax.random.fold_in(key, i))
        live = ~state.done
        row = live.reshape(-1, *([1] * (current.ndim - 1)))
        recorded = jnp.where(row, current, jnp.asarray(pad_value, current.dtype))
        count = state.generated + live
        return _State(
            i=i,
            cache=cache,
            current=current,
            done=state.done | finished(current, count, cache),
            generated=count,
            buffer=lax.dynamic_update_index_in_dim(state.buffer, recorded, i, axis=1),
        )

    if stop_early:
        keep_going = lambda s: (s.i < steps - 1) & ~jnp.all(s.done)  # noqa: E731
        state = lax.while_loop(keep_going, body, state)
    else:
        state = lax.scan(lambda s, _: (body(s), None), state, length=steps - 1)[0]
    return DecodeResult(state.buffer, state.generated, state.cache)
