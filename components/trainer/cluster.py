"""Where a Trainer runs: the `trainer.distribution` choices and this process's task in a TF_CONFIG cluster.

Kept free of TensorFlow imports so the CLI can reject a bad TF_CONFIG (exit 2) before anything starts.
TF_CONFIG is TensorFlow's standard cluster description, e.g. for the second of two workers:

    {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 1}}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from components.base import UsageError

DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
CLUSTER_ROLES = ("chief", "worker")  # MultiWorkerMirroredStrategy has no parameter servers or evaluators


@dataclass(frozen=True)
class ClusterTask:
    """This process's task in TF_CONFIG."""

    task_type: str
    task_index: int
    num_workers: int  # chief included
    has_chief_task: bool

    @property
    def is_chief(self) -> bool:
        # TF's rule: the "chief" task if the cluster has one, else worker 0.
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and not self.has_chief_task)


def cluster_task_from_env(environ=None) -> ClusterTask:
    """This process's task from TF_CONFIG, or a UsageError that says what is wrong with it."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw.strip():
        raise UsageError("trainer.distribution=multi_worker needs TF_CONFIG in the environment "
                         '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}}); see README, "Training on several machines"')
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, task_index = task["type"], int(task["index"])
        roles = {role: list(cluster[role]) for role in cluster}
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"TF_CONFIG is not a cluster and task description ({type(error).__name__}: {error})") from None
    unknown = sorted(set(roles) - set(CLUSTER_ROLES))
    if unknown:
        raise UsageError(f"TF_CONFIG has task types {unknown}; MultiWorkerMirroredStrategy uses only chief and worker")
    if len(roles.get("chief", [])) > 1:
        raise UsageError("TF_CONFIG lists more than one chief")
    if task_type not in roles or not 0 <= task_index < len(roles[task_type]):
        raise UsageError(f"TF_CONFIG's task {task_type}:{task_index} is not in its cluster")
    return ClusterTask(task_type, task_index, sum(len(v) for v in roles.values()), bool(roles.get("chief")))


def free_loopback_ports(count: int) -> list[int]:
    """`count` TCP ports free on 127.0.0.1 now, for a local (loopback) cluster's TF_CONFIG."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
