"""The default input of `python -m mapreduce.run`: text that ships with every CPython install.

`pydoc_data.topics` holds the reference-manual text that `help("if")` and friends print (79
topics, about 470 KB on CPython 3.11). It is written once per Python release as one UTF-8 file,
topics in name order, each headed by its name, so the engine can split and read it like any input.
"""

from __future__ import annotations

import os
import sys
import tempfile

SPLITS = 16  # the corpus is below the 1 MiB minimum automatic split: cut it so 8 workers get 2


def python_docs_corpus(data_dir: str | None = None) -> str:
    """Path of the corpus file under `data_dir` (default: TMP/mapreduce_corpus), written if
    missing (atomically, so concurrent first runs are safe)."""
    from pydoc_data.topics import topics  # here: a stripped-down Python may lack it

    data_dir = data_dir or os.path.join(tempfile.gettempdir(), "mapreduce_corpus")
    version = ".".join(map(str, sys.version_info[:3]))
    path = os.path.join(data_dir, f"python-{version}-pydoc-topics.txt")
    if os.path.exists(path):
        return path
    os.makedirs(data_dir, exist_ok=True)
    text = "".join(f"{name}\n\n{topics[name].rstrip()}\n\n" for name in sorted(topics))
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".corpus-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def corpus_split_bytes(path: str) -> int:
    """Split size that cuts the corpus file into `SPLITS` map tasks."""
    return max(1, -(-os.path.getsize(path) // SPLITS))
