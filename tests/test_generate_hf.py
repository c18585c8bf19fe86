"""`experiments.generate --ckpt HF_DIR`: a Hugging Face Llama directory (`config.json`,
safetensors, `tokenizer.json`) samples like the model it holds, on both backends, stops at
`config.json`'s `eos_token_id`, and bad directories are one `prog: error:` line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import generate
from jaxml.configs import LMConfig, SamplingConfig
from jaxml.data.text import save_tokenizer, train_tokenizer
from jaxml.interop.hf import save_hf
from jaxml.models.lm import LM

PROMPT = "def f(x): return"
GREEDY = SamplingConfig(temperature=0.0)
CONFIG = LMConfig(
    vocab_size=320, embed_dim=32, num_layers=2, num_heads=4, num_groups=2, max_seq_len=64
)
TEXT = ["def f(x): return x + 1", "for i in range(10): print(i)", "while True: break"] * 20


def make_hf_dir(path: Path, eos_token_id: int | None) -> tuple[Path, dict]:
    ids = jnp.zeros((1, 8), jnp.int32)
    params = LM(CONFIG).init(jax.random.key(3), ids)["params"]
    save_hf(path, CONFIG, params)
    save_tokenizer(train_tokenizer(TEXT, 300), path / "tokenizer.json")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "eos_token_id": eos_token_id}))
    return path, params


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> tuple[Path, dict]:
    return make_hf_dir(tmp_path_factory.mktemp("hf") / "llama", eos_token_id=None)


@jax.jit
def _full_forward(params: dict, ids: jax.Array) -> jax.Array:
    return LM(CONFIG).apply({"params": params}, ids)[0]


def greedy_reference(params: dict, ids: list[int], steps: int, eos: int | None) -> list[int]:
    """Greedy decoding by full forward passes (no cache, no decode loop). The causal model's
    logits at position n ignore the zero padding after it, so one padded shape compiles once."""
    ids = list(ids)
    width = len(ids) + steps
    for _ in range(steps):
        padded = jnp.asarray([ids + [0] * (width - len(ids))], jnp.int32)
        ids.append(int(np.argmax(_full_forward(params, padded)[0, len(ids) - 1])))
        if ids[-1] == eos:
            break
    return ids


def generated(capsys, *argv: str) -> str:
    assert generate.run(list(argv)) == 0
    return capsys.readouterr().out


def test_greedy_text_is_the_models_on_both_backends(hf_dir, capsys):
    path, params = hf_dir
    restored = generate.load_checkpoint(path)
    assert restored.config == CONFIG and restored.eos_id is None and restored.train is None
    prompt_ids = restored.tokenizer.encode(PROMPT).ids
    expected = restored.tokenizer.decode(greedy_reference(params, prompt_ids, 10, None))
    args = ["--ckpt", str(path), "--prompt", PROMPT, "--greedy", "--max_new_tokens", "10"]
    assert generated(capsys, *args) == expected + "\n"
    assert generated(capsys, *args, "--backend", "torch") == expected + "\n"
    sampled = generated(capsys, *args[:4], "--max_new_tokens", "6", "--seed", "1")
    assert sampled.startswith(PROMPT)


def test_rows_end_at_the_config_eos_token_id(hf_dir, tmp_path):
    _, params = hf_dir
    restored = generate.load_checkpoint(hf_dir[0])
    prompt_ids = restored.tokenizer.encode(PROMPT).ids
    tokens = greedy_reference(params, prompt_ids, 10, None)[len(prompt_ids) :]
    last_new = max(j for j, t in enumerate(tokens) if t not in tokens[:j])  # its first occurrence
    path, _ = make_hf_dir(tmp_path / "eos", eos_token_id=[tokens[last_new], 7])
    with_eos = generate.load_checkpoint(path)
    assert with_eos.eos_id == tokens[last_new]
    [text] = generate.sample(with_eos, PROMPT, max_new_tokens=10, sampling=GREEDY)
    assert text == restored.tokenizer.decode([*prompt_ids, *tokens[: last_new + 1]])
    [full] = generate.sample(restored, PROMPT, max_new_tokens=10, sampling=GREEDY)
    assert full == restored.tokenizer.decode([*prompt_ids, *tokens])
    assert last_new < len(tokens) - 1 and text != full  # the EOS ended the row, not the budget


def test_bad_hf_directories_are_refused_in_one_line(hf_dir, tmp_path, capsys):
    path, _ = hf_dir
    args = ["--prompt", PROMPT, "--max_new_tokens", "2"]
    cases = []
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((path / name).read_bytes())
    cases.append((["--ckpt", str(no_tokenizer)], "no tokenizer file"))
    cases.append((["--ckpt", str(path), "--step", "3"], "Hugging Face directory, it has no steps"))
    scaled = tmp_path / "scaled"
    scaled.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (scaled / name).write_bytes((path / name).read_bytes())
    config = json.loads((path / "config.json").read_text())
    rope = {"rope_type": "linear", "factor": 2.0}
    (scaled / "config.json").write_text(json.dumps({**config, "rope_scaling": rope}))
    cases.append((["--ckpt", str(scaled)], "rope_scaling"))
    bad_eos = tmp_path / "bad_eos"
    make_hf_dir(bad_eos, eos_token_id=5000)
    cases.append((["--ckpt", str(bad_eos)], "eos_token_id=5000 is not a token id"))
    for argv, message in cases:
        assert generate.run([*argv, *args]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("python -m experiments.generate: error:") and message in err, err
        assert "Traceback" not in err and err.count("\n") == 1, err
