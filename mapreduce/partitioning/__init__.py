"""Partitioning strategies, a skewed social-media data generator and a partition-load analyzer."""

from mapreduce.partitioning.data_generator import SocialMediaDataGenerator
from mapreduce.partitioning.partition_analyzer import PartitionAnalyzer, PartitionStats
from mapreduce.partitioning.partitioners import (
    CustomPartitioner,
    KeySalter,
    RangePartitioner,
    UserTierPartitioner,
    hash_partitioner,
    weighted_reservoir_sample,
)

__all__ = [
    "CustomPartitioner",
    "KeySalter",
    "PartitionAnalyzer",
    "PartitionStats",
    "RangePartitioner",
    "SocialMediaDataGenerator",
    "UserTierPartitioner",
    "hash_partitioner",
    "weighted_reservoir_sample",
]
