"""The decode benchmark runs and reports every contender (speed itself is never asserted)."""

from __future__ import annotations

import math

import pytest

from experiments import bench_decode


@pytest.mark.slow
def test_decode_group_reports_every_contender(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = {"embed_dim": 16, "num_heads": 4, "num_layers": 1, "ffn_latent_dim": 16}
    monkeypatch.setattr(bench_decode, "DIMS", tiny)
    monkeypatch.setattr(bench_decode, "STEPS", 4)
    monkeypatch.setattr(bench_decode, "RECOMPUTE_STEPS", 2)
    rows = {row["case"]: row for row in bench_decode.decode_group(2, 16, 1, with_torch=True)}
    names = ["mha", "recompute", "torch", "torch_1t", "gqa", "mqa"]
    assert list(rows) == [f"b2 ctx16 {name}" for name in names]
    assert all(row["tokens_per_s"] > 0 and row["vs_torch"] > 0 for row in rows.values())
    mha, gqa, mqa = (rows[f"b2 ctx16 {k}"]["cache_mb"] for k in ("mha", "gqa", "mqa"))
    assert mha == 4 * mqa == 2 * gqa == 2 * 2 * 16 * 16 * 4 / 2**20  # k+v, batch, slots, dims
    assert math.isnan(rows["b2 ctx16 torch"]["gb_per_s"]) and rows["b2 ctx16 mqa"]["gb_per_s"] > 0
    assert bench_decode.bandwidth_rows()[0]["gb_per_s"] > 0
