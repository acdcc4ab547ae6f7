"""Same input, same bytes: the Transform's TFRecords do not depend on the process that writes them.

A protobuf map (an Example's features) is serialised in an order that each process picks at random;
`write_tfrecord` asks for the deterministic order (keys sorted). The test looks for a process whose own
order is not the sorted one (half of them are) and checks that the file written there is the sorted
encoding all the same. (The whole pipeline's determinism is checked in `tests/test_kill_drills.py`.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WRITE = """
import sys
from pathlib import Path
import tensorflow as tf
from models.llm.tfrecords import write_tfrecord
path = Path(sys.argv[1])
write_tfrecord(path, [[1, 2, 3, 4]], [2])
record = next(iter(tf.data.TFRecordDataset(str(path)))).numpy()
example = tf.train.Example.FromString(record)
canonical = example.SerializeToString(deterministic=True)
print("own-order-differs" if example.SerializeToString() != canonical else "own-order-sorted",
      "file-canonical" if record == canonical else "file-not-canonical")
"""


def test_tfrecords_are_the_canonical_encoding_whatever_the_process(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for attempt in range(12):
        done = subprocess.run([sys.executable, "-c", WRITE, str(tmp_path / f"{attempt}.tfrecord")], cwd=REPO, env=env,
                              check=True, capture_output=True, text=True)
        own_order, file_order = done.stdout.split()[-2:]
        if own_order == "own-order-differs":
            assert file_order == "file-canonical"
            return
    pytest.skip("12 processes in a row happened to order the map as sorted (chance 1 in 4,096)")
