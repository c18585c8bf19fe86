"""A small MapReduce engine: jobs are plain functions, executors are sequential, a local process
pool or a Dask cluster, and every run writes a JSON report. See README "MapReduce"."""

from mapreduce.engine import JobFailedError, JobResult, run_job
from mapreduce.executors import DaskExecutor, ProcessExecutor, SequentialExecutor, make_executor
from mapreduce.job import FaultPlan, InMapperCombiner, Job, JobConfig
from mapreduce.tokenizer import tokenize
from mapreduce.word_stats import JOBS, get_job, get_words_stats_in_file

__all__ = [
    "JOBS",
    "DaskExecutor",
    "FaultPlan",
    "InMapperCombiner",
    "Job",
    "JobConfig",
    "JobFailedError",
    "JobResult",
    "ProcessExecutor",
    "SequentialExecutor",
    "get_job",
    "get_words_stats_in_file",
    "make_executor",
    "run_job",
    "tokenize",
]
