"""Command line: `python -m mapreduce.generate --out social_data [--users N] [--posts N]
[--activity N] [--engagement N] [--seed S]` writes skewed social-media JSONL files and prints
how skewed they came out."""

from __future__ import annotations

import argparse

from mapreduce.cli import at_least_two, non_negative_int, positive_int
from mapreduce.partitioning.data_generator import SocialMediaDataGenerator, skew_summary
from mapreduce.report import format_table


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(
        prog="python -m mapreduce.generate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default="social_data", help="output directory")
    parser.add_argument("--users", type=at_least_two, default=10_000)
    parser.add_argument("--posts", type=at_least_two, default=20_000)
    parser.add_argument(
        "--activity", type=non_negative_int, default=100_000, help="user_activity records (0: skip)"
    )
    parser.add_argument(
        "--engagement",
        type=non_negative_int,
        default=200_000,
        help="content_engagement records (0: skip)",
    )
    parser.add_argument("--files", type=positive_int, default=1, help="files of each kind")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    args = parser.parse_args(argv)
    generator = SocialMediaDataGenerator(args.users, args.posts, seed=args.seed)
    paths: list[str] = []
    for index in range(1, args.files + 1):
        if args.activity:
            paths.append(generator.generate_user_activity_logs(args.activity, args.out, index))
        if args.engagement:
            paths.append(generator.generate_content_engagement(args.engagement, args.out, index))
    rows = [{"file": p, **skew_summary(p, args.users, args.posts)} for p in paths]
    print(format_table(rows, ["file", "records", "top_1pct_users_share", "top_0.5pct_posts_share"]))
    return paths


if __name__ == "__main__":
    main()
