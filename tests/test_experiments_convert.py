"""`python -m experiments.convert`: HF -> torch state_dict -> orbax -> sharded HF keeps every weight
bit-exact (and the torch file runs in torchref), bad inputs exit 2 with one line, NaN weights are
never written, nothing is overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from experiments import convert
from jaxml.configs import LMConfig
from jaxml.interop.hf import load_hf, params_to_hf, save_hf
from jaxml.models.lm import LM
from torchref.models.lm import LM as TorchLM

CONFIG = LMConfig(
    vocab_size=40, embed_dim=16, num_layers=2, num_heads=4, ffn_latent_dim=24, max_seq_len=16
)
IDS = np.arange(10, dtype=np.int32).reshape(2, 5)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = LM(CONFIG).init(jax.random.key(0), jnp.asarray(IDS))["params"]
    path = tmp_path_factory.mktemp("src") / "hf"
    save_hf(path, CONFIG, jax.tree.map(np.asarray, params))
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    try:
        code = convert.main([str(a) for a in argv])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def test_round_trip_through_every_format(
    hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_file = tmp_path / "model.safetensors"
    assert _run(capsys, hf_dir, state_file) == (0, "")
    assert _run(capsys, state_file, tmp_path / "ckpt", "--to", "orbax") == (0, "")
    assert _run(capsys, tmp_path / "ckpt", tmp_path / "back", "--shard-mb", "0.01") == (0, "")
    assert len(list((tmp_path / "back").glob("model-*-of-*.safetensors"))) > 1
    config, params = load_hf(tmp_path / "back")
    original_config, original = load_hf(hf_dir)
    assert config == original_config == CONFIG
    for key, value in params_to_hf(original, CONFIG).items():
        np.testing.assert_array_equal(params_to_hf(params, CONFIG)[key], value)

    model = TorchLM(CONFIG)
    model.load_state_dict(safetensors.torch.load_file(state_file), strict=True)
    with torch.no_grad():
        theirs, _ = model(torch.from_numpy(IDS).long())
    ours, _ = LM(CONFIG).apply({"params": original}, IDS)
    np.testing.assert_allclose(theirs.numpy(), np.asarray(ours), atol=1e-5)


def test_bad_inputs_exit_2_without_writing(
    hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("keep")
    code, err = _run(capsys, hf_dir, taken)
    assert code == 2 and "refusing to overwrite" in err and (taken / "x").read_text() == "keep"
    code, err = _run(capsys, tmp_path / "missing", tmp_path / "out")
    assert code == 2 and "no such file or directory" in err
    bare = tmp_path / "bare.safetensors"
    safetensors.torch.save_file({"embed.weight": torch.zeros(40, 16)}, str(bare))
    code, err = _run(capsys, bare, tmp_path / "out")
    assert code == 2 and "pass --config" in err and not (tmp_path / "out").exists()
    lm_json = tmp_path / "lm.json"
    lm_json.write_text(
        json.dumps({"vocab_size": 40, "embed_dim": 16, "num_layers": 1, "num_heads": 4})
    )
    code, err = _run(capsys, bare, tmp_path / "out", "--config", lm_json)
    assert code == 2 and "state_dict has no" in err and err.count("\n") == 1
    code, err = _run(capsys, hf_dir, tmp_path / "o.bin", "--to", "torch")
    assert code == 2 and ".safetensors" in err


def test_nan_weights_are_never_written(
    hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, params = load_hf(hf_dir)
    params["norm"]["scale"][0] = np.nan
    save_hf(tmp_path / "nan", config, params)
    code, err = _run(capsys, tmp_path / "nan", tmp_path / "out.safetensors")
    assert code == 1 and "NaN" in err and not (tmp_path / "out.safetensors").exists()
