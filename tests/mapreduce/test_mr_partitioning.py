"""Partitioners, the skewed data generator, the partition analyzer and the influence challenge."""

import os
import random
import subprocess
import sys
import zlib
from collections import Counter

import pytest

from mapreduce.hashing import stable_hash
from mapreduce.partitioning.challenge_01_user_influence import run_challenge
from mapreduce.partitioning.data_generator import SocialMediaDataGenerator, skew_summary
from mapreduce.partitioning.partition_analyzer import PartitionAnalyzer, read_jsonl
from mapreduce.partitioning.partitioners import (
    CustomPartitioner,
    KeySalter,
    RangePartitioner,
    UserTierPartitioner,
    hash_partitioner,
    weighted_reservoir_sample,
)


def test_stable_hash_is_the_same_in_every_process():
    keys = ["fox", "Straße", "", 42, ["user", 3]]
    here = [stable_hash(k) for k in keys]
    code = f"from mapreduce.hashing import stable_hash; print([stable_hash(k) for k in {keys!r}])"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(here)
    assert here[0] == zlib.crc32(b"fox") and here[1] == zlib.crc32("Straße".encode())
    assert hash_partitioner("fox", 7) == here[0] % 7


def cv(loads):
    mean = sum(loads) / len(loads)
    return (sum((x - mean) ** 2 for x in loads) / len(loads)) ** 0.5 / mean


def loads_of(partitioner, counts, num_partitions):
    loads = [0] * num_partitions
    for key, count in counts.items():
        loads[partitioner(key, num_partitions)] += count
    return loads


def test_range_partitioner_balances_skewed_keys_better_than_hash():
    rng = random.Random(1)
    # 400 keys whose loads follow a Pareto law: no key alone exceeds a partition's fair share
    counts = {f"key{i:04d}": int(50 * rng.paretovariate(1.3)) + 1 for i in range(400)}
    records = [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(records)
    sources = [
        records[i : i + len(records) // 4] for i in range(0, len(records), len(records) // 4)
    ]
    sample = weighted_reservoir_sample(sources, 2000, seed=0)
    ranged = RangePartitioner.from_sample(sample, 8)
    range_cv = cv(loads_of(ranged, counts, 8))
    hash_cv = cv(loads_of(hash_partitioner, counts, 8))
    assert ranged.effective_partitions == 8
    assert range_cv < 0.6 * hash_cv, (range_cv, hash_cv)


def test_range_partitioner_reports_fewer_partitions_for_a_hot_key():
    sample = [("a", 1.0), ("b", 1.0), ("hot", 20.0), ("z", 1.0)]
    ranged = RangePartitioner.from_sample(sample, 4)
    assert ranged.cut_points == ("hot",)
    assert ranged.effective_partitions == 2 and ranged.hot_keys == ("hot",)
    assert "4 partitions requested, 2 effective" in ranged.describe()
    assert [ranged(k, 4) for k in ["a", "hot", "hotter", "zz"]] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="built for R=4"):
        ranged("a", 5)


def test_weighted_reservoir_sample_weights_each_source_by_its_size():
    sample = weighted_reservoir_sample([range(1000), range(10)], per_source=5, seed=3)
    assert len(sample) == 10
    assert sorted({w for _, w in sample}) == [2.0, 200.0]
    assert sum(w for _, w in sample) == pytest.approx(1010)


def test_user_tier_gives_power_users_their_own_partitions():
    counts = Counter({f"u{i}": 1 for i in range(200)})
    counts.update({"p1": 500, "p2": 400, "p3": 300})
    tier = UserTierPartitioner.from_counts(counts, 8, power_fraction=0.015, tier_partitions=3)
    assert {tier(p, 8) for p in ["p1", "p2", "p3"]} == {0, 1, 2}
    assert all(3 <= tier(f"u{i}", 8) < 8 for i in range(200))
    packed = UserTierPartitioner.from_loads({"a": 10, "b": 6, "c": 5, "d": 1}, 4, tier_partitions=2)
    assert packed.assignment == {"a": 0, "b": 1, "c": 1, "d": 0}
    with pytest.raises(ValueError, match="tier_partitions"):
        UserTierPartitioner.from_loads({"a": 1}, 2, tier_partitions=2)


def by_length(key, num_partitions):
    return len(key) % (num_partitions + 1)


def test_custom_partitioner_is_range_checked_and_salter_spreads_hot_keys():
    custom = CustomPartitioner(by_length, "by_length")
    assert custom("abc", 8) == 3
    with pytest.raises(ValueError, match="by_length partitioner returned 4"):
        custom("abcd", 4)
    salter = KeySalter(frozenset({"hot"}), salts=4)
    assert salter("cold", "anything") == ("cold", 0)
    assert {salter("hot", f"user{i}")[1] for i in range(100)} == {0, 1, 2, 3}


@pytest.fixture(scope="module")
def social(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("social"))
    generator = SocialMediaDataGenerator(2000, 4000, seed=7)
    return {
        "generator": generator,
        "activity": generator.generate_user_activity_logs(20_000, directory),
        "engagement": generator.generate_content_engagement(20_000, directory),
        "dir": directory,
    }


def test_generator_is_seeded_and_skewed_as_specified(social, tmp_path):
    again = SocialMediaDataGenerator(2000, 4000, seed=7).generate_user_activity_logs(
        20_000, str(tmp_path)
    )
    assert open(again, "rb").read() == open(social["activity"], "rb").read()
    activity = skew_summary(social["activity"], num_users=2000, num_posts=4000)
    engagement = skew_summary(social["engagement"], num_users=2000, num_posts=4000)
    assert activity["records"] == len(read_jsonl(social["activity"])) == 20_000
    assert activity["top_1pct_users_share"] == pytest.approx(0.8, abs=0.08)
    assert engagement["top_0.5pct_posts_share"] == pytest.approx(0.7, abs=0.08)
    records = read_jsonl(social["engagement"])
    region_of = {}
    for r in read_jsonl(social["activity"]):
        region_of[r["user_id"]] = r["region"]
    same = [
        region_of.get(r["author_id"]) == r["region"] for r in records if r["author_id"] in region_of
    ]
    assert sum(same) / len(same) > 0.7  # engagement clusters in the author's region


def test_analyzer_compares_strategies_and_draws_a_chart(social, tmp_path):
    analyzer = PartitionAnalyzer(num_partitions=8)
    results = analyzer.compare_strategies(
        social["activity"], lambda r: r["user_id"], custom=by_length
    )
    assert list(results) == ["hash", "range", "user_tier", "salted", "custom"]
    assert results["salted"].cv < results["hash"].cv
    assert results["salted"].max_over_mean < results["hash"].max_over_mean
    hot = results["hash"].hot_keys
    assert hot and all(c > 5 for _, c in hot) and hot == sorted(hot, key=lambda kv: -kv[1])
    table = analyzer.comparison_table(results)
    assert table.splitlines()[0].split()[:4] == ["strategy", "partitions", "max_load", "max/mean"]
    chart = analyzer.visualize_partition_loads(results, str(tmp_path / "loads.png"))
    assert open(chart, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(chart) < 100_000


def test_influence_challenge_salting_fixes_the_hot_key(social, tmp_path):
    outcome = run_challenge(
        [social["engagement"]], executor="sequential", num_partitions=4, output_dir=str(tmp_path)
    )
    assert outcome["identical_results"] and outcome["hot_keys"]
    rows = {r["strategy"]: r for r in outcome["rows"]}
    assert set(rows) == {"hash", "range", "user_tier", "salted"}
    assert rows["salted"]["stages"] == 2
    assert rows["salted"]["max/mean load"] < rows["hash"]["max/mean load"]
    assert rows["salted"]["cv"] < rows["hash"]["cv"]
    assert sum(outcome["loads"]["hash"]) == 20_000
