"""Skewed social-media activity as JSON lines, for partitioning experiments (seeded, numpy).

- Pareto users: `power_user_fraction` (1%) of users produce `power_user_share` (80%) of the
  activity; within each tier activity follows a Pareto(1.5) draw.
- Viral content: `viral_fraction` (0.5%) of posts receive `viral_share` (70%) of the engagement;
  posts are authored mostly by active users, so viral posts mostly belong to power users.
- Geographic clustering: users live in regions with unequal populations, engagement comes from
  the author's own region `local_share` (80%) of the time, and timestamps cluster around each
  region's evening.

`user_activity_N.jsonl`: `{"event_id", "user_id", "action", "post_id", "region", "ts"}`.
`content_engagement_N.jsonl`: `{"event_id", "post_id", "author_id", "user_id", "engagement",
"region", "ts"}` (`user_id` is the engaging user).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_REGIONS: tuple[tuple[str, float, int], ...] = (
    # name, share of users, UTC hour of the evening peak
    ("us-east", 0.30, 0),
    ("eu-west", 0.25, 19),
    ("us-west", 0.15, 3),
    ("ap-south", 0.15, 14),
    ("ap-east", 0.10, 12),
    ("sa-east", 0.05, 23),
)
ACTIONS = (("view", 0.50), ("like", 0.25), ("comment", 0.10), ("share", 0.10), ("post", 0.05))
ENGAGEMENTS = (("like", 0.70), ("comment", 0.20), ("share", 0.10))
EPOCH = 1_700_000_000


def _tier_weights(
    n: int, tier: np.ndarray, tier_share: float, rng: np.random.Generator
) -> np.ndarray:
    """Probabilities over `n` items: items in `tier` share `tier_share`, the rest the remainder;
    Pareto(1.5) weights inside each group."""
    raw = rng.pareto(1.5, n) + 1.0
    in_tier = np.zeros(n, bool)
    in_tier[tier] = True
    weights = np.empty(n)
    weights[in_tier] = raw[in_tier] / raw[in_tier].sum() * tier_share
    weights[~in_tier] = raw[~in_tier] / raw[~in_tier].sum() * (1.0 - tier_share)
    return weights / weights.sum()


def top_share(counts: Iterable[int], fraction: float, population: int | None = None) -> float:
    """Share of the total held by the top `fraction` of a `population` of items (default: the
    items present in `counts`; items that never occur count as zeros), at least one item."""
    values = sorted(counts, reverse=True)
    if not values:
        return 0.0
    top = max(1, round((population or len(values)) * fraction))
    return sum(values[:top]) / sum(values)


@dataclass(frozen=True)
class _World:
    user_region: np.ndarray
    user_weights: np.ndarray
    power_users: np.ndarray
    post_author: np.ndarray
    post_weights: np.ndarray
    viral_posts: np.ndarray


class SocialMediaDataGenerator:
    """Seeded generator of skewed activity logs; the same arguments always give the same files."""

    def __init__(
        self,
        num_users: int = 10_000,
        num_posts: int = 20_000,
        *,
        power_user_fraction: float = 0.01,
        power_user_share: float = 0.8,
        viral_fraction: float = 0.005,
        viral_share: float = 0.7,
        local_share: float = 0.8,
        regions: Sequence[tuple[str, float, int]] = DEFAULT_REGIONS,
        seed: int = 0,
    ):
        for name, value in {
            "power_user_fraction": power_user_fraction,
            "power_user_share": power_user_share,
            "viral_fraction": viral_fraction,
            "viral_share": viral_share,
            "local_share": local_share,
        }.items():
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name}={value} must be in (0, 1)")
        if num_users < 2 or num_posts < 2:
            raise ValueError(
                f"need num_users >= 2 and num_posts >= 2, got {num_users} and {num_posts}"
            )
        self.num_users = num_users
        self.num_posts = num_posts
        self.power_user_fraction = power_user_fraction
        self.power_user_share = power_user_share
        self.viral_fraction = viral_fraction
        self.viral_share = viral_share
        self.local_share = local_share
        self.regions = tuple(regions)
        self.seed = seed
        self.world = self._build_world()

    def _build_world(self) -> _World:
        rng = np.random.default_rng([self.seed, 0])
        shares = np.array([r[1] for r in self.regions])
        user_region = rng.choice(len(self.regions), self.num_users, p=shares / shares.sum())
        n_power = max(1, round(self.num_users * self.power_user_fraction))
        power_users = rng.choice(self.num_users, n_power, replace=False)
        user_weights = _tier_weights(self.num_users, power_users, self.power_user_share, rng)
        post_author = rng.choice(self.num_users, self.num_posts, p=user_weights)
        n_viral = max(1, round(self.num_posts * self.viral_fraction))
        viral_posts = rng.choice(self.num_posts, n_viral, replace=False)
        post_weights = _tier_weights(self.num_posts, viral_posts, self.viral_share, rng)
        return _World(
            user_region, user_weights, power_users, post_author, post_weights, viral_posts
        )

    # ------------------------------------------------------------------ sampling helpers
    def _timestamps(self, regions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        peaks = np.array([r[2] for r in self.regions])[regions]
        day = rng.integers(0, 30, len(regions))
        hour = (peaks + rng.normal(0.0, 2.5, len(regions))) % 24
        return EPOCH + day * 86_400 + (hour * 3600).astype(np.int64)

    def _local_engagers(self, author_region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Engaging users: from the author's region with probability `local_share`, else anyone."""
        w = self.world
        engagers = rng.choice(self.num_users, len(author_region), p=w.user_weights)
        local = rng.random(len(author_region)) < self.local_share
        for region in range(len(self.regions)):
            members = np.flatnonzero(w.user_region == region)
            rows = np.flatnonzero(local & (author_region == region))
            if len(members) and len(rows):
                p = w.user_weights[members] / w.user_weights[members].sum()
                engagers[rows] = members[rng.choice(len(members), len(rows), p=p)]
        return engagers

    @staticmethod
    def _write(path: str, records: Iterable[dict[str, Any]]) -> str:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        os.replace(tmp, path)
        return path

    def _names(self) -> list[str]:
        return [r[0] for r in self.regions]

    # ------------------------------------------------------------------ files
    def generate_user_activity_logs(
        self, num_records: int, output_dir: str, file_index: int = 1
    ) -> str:
        """Write `output_dir/user_activity_{file_index}.jsonl` with `num_records` events."""
        rng = np.random.default_rng([self.seed, 1, file_index])
        w = self.world
        users = rng.choice(self.num_users, num_records, p=w.user_weights)
        actions = rng.choice(len(ACTIONS), num_records, p=[a[1] for a in ACTIONS])
        posts = rng.choice(self.num_posts, num_records, p=w.post_weights)
        regions = w.user_region[users]
        ts = self._timestamps(regions, rng)
        names = self._names()
        os.makedirs(output_dir, exist_ok=True)
        records = (
            {
                "event_id": i,
                "user_id": f"u{users[i]:06d}",
                "action": ACTIONS[actions[i]][0],
                "post_id": f"p{posts[i]:07d}",
                "region": names[regions[i]],
                "ts": int(ts[i]),
            }
            for i in range(num_records)
        )
        return self._write(os.path.join(output_dir, f"user_activity_{file_index}.jsonl"), records)

    def generate_content_engagement(
        self, num_records: int, output_dir: str, file_index: int = 1
    ) -> str:
        """Write `output_dir/content_engagement_{file_index}.jsonl` with `num_records` engagements."""
        rng = np.random.default_rng([self.seed, 2, file_index])
        w = self.world
        posts = rng.choice(self.num_posts, num_records, p=w.post_weights)
        authors = w.post_author[posts]
        engagers = self._local_engagers(w.user_region[authors], rng)
        kinds = rng.choice(len(ENGAGEMENTS), num_records, p=[e[1] for e in ENGAGEMENTS])
        regions = w.user_region[engagers]
        ts = self._timestamps(regions, rng)
        names = self._names()
        os.makedirs(output_dir, exist_ok=True)
        records = (
            {
                "event_id": i,
                "post_id": f"p{posts[i]:07d}",
                "author_id": f"u{authors[i]:06d}",
                "user_id": f"u{engagers[i]:06d}",
                "engagement": ENGAGEMENTS[kinds[i]][0],
                "region": names[regions[i]],
                "ts": int(ts[i]),
            }
            for i in range(num_records)
        )
        return self._write(
            os.path.join(output_dir, f"content_engagement_{file_index}.jsonl"), records
        )


def skew_summary(
    path: str, num_users: int | None = None, num_posts: int | None = None
) -> dict[str, float]:
    """Measured skew of a generated file: share of the top 1% of users (of `num_users`, default
    the users present), of the top 0.5% of posts, and each region's share."""
    users: Counter[str] = Counter()
    posts: Counter[str] = Counter()
    regions: Counter[str] = Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            users[record["user_id"]] += 1
            posts[record["post_id"]] += 1
            regions[record["region"]] += 1
    total = sum(regions.values())
    summary = {
        "records": total,
        "top_1pct_users_share": top_share(users.values(), 0.01, num_users),
        "top_0.5pct_posts_share": top_share(posts.values(), 0.005, num_posts),
    }
    summary.update({f"region_{name}": count / total for name, count in sorted(regions.items())})
    return summary
