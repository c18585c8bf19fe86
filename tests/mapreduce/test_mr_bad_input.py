"""Input the engine must not turn into a silent wrong answer or a lost output: text in another
encoding, too many bad records, an output directory that overlaps the input, and the work
directory left behind by a failed job."""

import json
from collections import Counter

import pytest

from mapreduce.engine import JobFailedError, run_job
from mapreduce.job import JobConfig
from mapreduce.tokenizer import tokenize
from mapreduce.word_stats import get_job

LATIN1_TEXT = "Café crème\nGarçon, déjà vu: naïve façade\nÜber große Straße\nplain ASCII\n" * 20


@pytest.fixture
def latin1_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(LATIN1_TEXT.encode("latin-1"))
    return str(path)


@pytest.mark.parametrize("use_combiner", [True, False])
def test_text_in_another_encoding_fails_instead_of_giving_an_empty_result(
    latin1_file, tmp_path, use_combiner
):
    work = tmp_path / "work"
    work.mkdir()
    config = JobConfig(num_partitions=2, use_combiner=use_combiner)
    with pytest.raises(JobFailedError) as failure:
        run_job(
            get_job("word_count"), [latin1_file], tmp_path / "out", config=config, work_dir=work
        )
    message = str(failure.value)
    assert "60 of 80 input records were bad" in message and "max_bad_fraction=0.01" in message
    assert "UnicodeDecodeError" in message and "may not be utf-8" in message
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed" and report["bad_records"]["count"] == 60
    assert not (tmp_path / "out" / "_SUCCESS").exists() and list(work.iterdir()) == []


@pytest.mark.parametrize("use_combiner", [True, False])
@pytest.mark.parametrize("encoding", ["latin-1", "iso8859_1", "cp1252"])
def test_encoding_option_reads_the_text_right(latin1_file, tmp_path, use_combiner, encoding):
    config = JobConfig(
        num_partitions=3, split_bytes=50, encoding=encoding, use_combiner=use_combiner
    )
    result = run_job(get_job("word_count"), [latin1_file], tmp_path / "out", config=config)
    assert dict(result.records()) == Counter(tokenize(LATIN1_TEXT))
    assert result.report["reconciliation"]["records_skipped"] == 0


def test_bad_record_fraction_is_a_limit(tmp_path):
    lines = [f"line {i} words".encode() for i in range(400)]
    lines[7] = b"\xff broken"
    path = tmp_path / "one_bad.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = run_job(get_job("word_count"), [path], tmp_path / "ok")  # 1/400 <= 1%
    assert result.report["reconciliation"]["records_skipped"] == 1
    with pytest.raises(JobFailedError, match="1 of 400 .* max_bad_fraction=0.001"):
        run_job(
            get_job("word_count"), [path], tmp_path / "x", config=JobConfig(max_bad_fraction=0.001)
        )
    unlimited = JobConfig(max_bad_fraction=None)
    assert run_job(get_job("word_count"), [path], tmp_path / "u", config=unlimited).report[
        "reconciliation"
    ]["ok"]


def test_output_overlapping_the_input_is_refused_and_nothing_is_touched(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("some words\n")
    previous = run_job(get_job("word_count"), [data], tmp_path / "previous")
    before = {p.name: p.read_bytes() for p in (tmp_path / "previous").iterdir()}
    work = tmp_path / "work"
    work.mkdir()
    cases = [
        ([data], data),  # output is the input directory
        ([data], data / "out"),  # output inside an input directory
        ([tmp_path / "previous" / "part-00000.tsv"], tmp_path / "previous"),  # input in output
    ]
    for inputs, output in cases:
        with pytest.raises(ValueError, match="overlaps input"):
            run_job(get_job("word_count"), inputs, output, work_dir=work)
    assert sorted(p.name for p in data.iterdir()) == ["a.txt"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "previous").iterdir()} == before
    assert previous.files and list(work.iterdir()) == []
