"""Same input, same bytes: the Transform's TFRecords do not depend on the process that writes them.

A protobuf map (an Example's features) is serialised in an order that varies with the process's string
hashing; `write_tfrecord` asks for the deterministic order. Two processes with other hash seeds write
the same records here (the whole pipeline's determinism is checked in `tests/test_kill_drills.py`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WRITE = ("import sys; from pathlib import Path; from models.llm.tfrecords import write_tfrecord; "
         "write_tfrecord(Path(sys.argv[1]), [[1, 2, 3, 4], [5, 6, 7]], [2, 1])")


def test_tfrecords_are_byte_identical_across_processes(tmp_path):
    digests = []
    for seed in ("1", "3"):  # two seeds known to order the two features differently
        path = tmp_path / f"records-{seed}.tfrecord"
        env = {**os.environ, "PYTHONHASHSEED": seed, "TF_CPP_MIN_LOG_LEVEL": "3"}
        subprocess.run([sys.executable, "-c", WRITE, str(path)], cwd=REPO, env=env, check=True, capture_output=True)
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
