"""The Trainer under tf.distribute: MirroredStrategy on local devices, MultiWorkerMirroredStrategy across hosts.

Keras 3's `fit` under MultiWorkerMirroredStrategy is untested upstream and TF's multi-worker Keras tutorial
has been broken since TF 2.16 (keras#20585, tensorflow#72388), so this is TF's documented custom loop:
model and optimizer are built under `strategy.scope()`, every replica computes the gradient of the summed
answer-token NLL of its share of the global batch under `strategy.run`, the sums are reduced across replicas
and divided by the global answer-token count, and the update is applied once with the reduced gradient.
A step therefore equals a single-process step on the same global batch (up to float summation order):
`batch_size` is the global batch, each replica gets batch_size / replicas, and the learning rate needs no
scaling. Gradient clipping sees the reduced gradient (Keras's optimizer, called in a replica, would clip
each replica's gradient before summing). The chief alone validates, writes TensorBoard, checkpoints and
the artifact; the others wait at the next collective and follow the chief's early-stopping decision.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api
from tqdm.auto import tqdm

from components.base import UsageError
from components.trainer.callbacks import best_round_entry, record_round
from components.trainer.checkpoint import CheckpointMismatch, load_checkpoint
from components.trainer.cluster import cluster_task_from_env
from models.llm.tfrecords import answer_nll, load_dataset
from schemas.artifacts import DatasetsFiles

SUM = tf.distribute.ReduceOp.SUM
_STRATEGIES: dict[str, tf.distribute.Strategy] = {}


def start_strategy(distribution: str) -> tf.distribute.Strategy:
    """The process's strategy for `distribution`, created once.

    MultiWorkerMirroredStrategy must exist before TensorFlow runs its first op and its constructor waits
    until every task of TF_CONFIG is up, so `pipeline.py run` and `pipeline.py worker` call this first.
    """
    if distribution not in _STRATEGIES:
        if distribution == "multi_worker":
            cluster_task_from_env()  # a clear error instead of TF's for a missing or broken TF_CONFIG
            _STRATEGIES[distribution] = tf.distribute.MultiWorkerMirroredStrategy()
        elif distribution == "mirrored":
            _STRATEGIES[distribution] = tf.distribute.MirroredStrategy()  # every local GPU, else the CPU
        else:
            raise ValueError(f"no strategy for distribution {distribution!r}")
    return _STRATEGIES[distribution]


def is_chief(distribution: str) -> bool:
    return distribution != "multi_worker" or cluster_task_from_env().is_chief


def values_of_all_replicas(strategy, value: float) -> np.ndarray:
    """`value` of every replica, in replica order (one all-gather): handshakes and the chief's decisions."""
    if not hasattr(strategy, "_fintune_gather"):  # traced once: eager collectives are slow and warn
        strategy._fintune_gather = tf.function(
            lambda local: strategy.gather(strategy.run(tf.identity, args=(local,)), axis=0))
    return strategy._fintune_gather(tf.constant([value], tf.float64)).numpy()


def settings_digest(p, first_round: int) -> float:
    """48 bits of a hash of the trainer settings and the resume point (exact in float64)."""
    text = json.dumps({**asdict(p), "first_round": first_round}, sort_keys=True)
    return float(int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big"))


def replica_dataset_fn(datasets_dir: Path, p, max_length: int, pad_id: int, skip_batches: int):
    """Each input pipeline's share of every global batch, in the single-process order.

    Every worker reads the same seeded, shuffled, bucketed stream of global batches and keeps its replicas'
    rows of each one (TF's "DATA" sharding of a batched dataset, spelled out: auto-rebatching cannot split
    bucket_by_sequence_length's batches), so the union of a step's replica batches is the global batch a
    single process would train on.
    """
    train_records = DatasetsFiles(datasets_dir).tfrecord("train")

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        replicas = input_context.num_replicas_in_sync // input_context.num_input_pipelines  # on this worker
        per_replica = input_context.get_per_replica_batch_size(p.batch_size)
        first = input_context.input_pipeline_id * replicas * per_replica

        def this_workers_rows(tensor):  # (global batch, ...) -> (replicas, per replica, ...)
            rows = tensor[first:first + replicas * per_replica]
            return tf.reshape(rows, tf.concat([[replicas, per_replica], tf.shape(tensor)[1:]], 0))

        train = load_dataset(train_records, p.batch_size, max_length, pad_id, shuffle=True,
                             seed=p.seed, repeat=True).skip(skip_batches)
        return train.map(lambda *batch: tf.nest.map_structure(this_workers_rows, batch)).unbatch()

    return dataset_fn


def make_train_step(strategy, trainer_model, optimizer, pad_id: int, jit_compile: bool):
    variables = trainer_model.trainable_variables
    sizes = [int(np.prod(v.shape)) for v in variables]

    @tf.function(jit_compile=jit_compile)
    def replica_step(x, y, weight):
        with tf.GradientTape() as tape:
            hidden = trainer_model(x, training=True)  # (per replica, seq, hidden)
            nll_sum = tf.reduce_sum(answer_nll(trainer_model.backbone, hidden, y, weight))
        gradients = tape.gradient(nll_sum, variables)
        answers = tf.reduce_sum(tf.cast(weight > 0, tf.float32))
        tokens = tf.cast(tf.size(y), tf.float32)
        useful = tf.reduce_sum(tf.cast(tf.not_equal(y, pad_id), tf.float32))  # pad_id marks padding only
        # One flat vector, so a step costs one all-reduce however many LoRA tensors there are.
        return tf.concat([tf.reshape(g, [-1]) for g in gradients] + [tf.stack([nll_sum, answers, tokens, useful])], 0)

    @tf.function
    def train_step(iterator):
        summed = strategy.reduce(SUM, strategy.run(replica_step, args=next(iterator)), axis=None)
        *flat_gradients, counts = tf.split(summed, sizes + [4])
        nll_sum, answers, tokens, useful = tf.unstack(counts)
        gradients = [tf.reshape(g, v.shape) / answers for g, v in zip(flat_gradients, variables)]
        # Cross-replica context: the optimizer clips and applies the reduced gradient once.
        optimizer.apply(gradients, variables)
        return nll_sum / answers, tokens, useful

    return train_step


def make_validation_loss(trainer_model):
    """Keras `evaluate`'s loss, on this process alone: per-batch mean answer NLL, averaged by batch size."""
    @tf.function(reduce_retracing=True)
    def batch_loss(x, y, weight):
        return tf.reduce_mean(answer_nll(trainer_model.backbone, trainer_model(x, training=False), y, weight))

    def validation_loss(validation) -> float:
        total = count = 0.0
        for x, y, weight in validation:
            rows = int(tf.shape(y)[0])
            total += float(batch_loss(x, y, weight)) * rows
            count += rows
        return total / count

    return validation_loss


def train_trial_distributed(log, p, datasets_dir: Path, base_model_dir: Path, tensorboard_dir: Path | None,
                            work_dir: Path, chief: bool):
    """One trial under `p.distribution`; the chief gets a TrialResult, every other worker None."""
    from components.trainer.loop import TrialResult, build_lora_model, build_optimizer, validation_label_eval

    strategy = start_strategy(p.distribution)
    replicas = strategy.num_replicas_in_sync
    if p.batch_size % replicas:
        raise UsageError(f"trainer.batch_size {p.batch_size} (the global batch) must be a multiple of the "
                         f"{replicas} replicas")
    datasets = DatasetsFiles(datasets_dir)
    transform = datasets.transform()
    checkpoint = work_dir / "checkpoint.npz"
    with strategy.scope():  # every variable below is mirrored on each replica
        causal_lm, tokenizer, base_config, adapters, trainer_model = build_lora_model(base_model_dir, p)
        optimizer = build_optimizer(p)
        trained = SimpleNamespace(trainable_variables=trainer_model.trainable_variables, optimizer=optimizer)
        state = {"best_score": -math.inf, "best_round": -1, "history": [], "stale": 0,
                 "best_weights": [np.asarray(v) for v in trained.trainable_variables]}
        try:  # every worker reads the chief's checkpoint: the run folder is shared, as TF requires
            resumed = load_checkpoint(checkpoint, trained)
        except CheckpointMismatch as error:
            raise UsageError(str(error)) from None
        if resumed is None:
            optimizer.build(trained.trainable_variables)
    first_round = 0
    if resumed is not None:
        first_round, state = resumed[0] + 1, resumed[1]
        log(f"  resuming from the checkpoint after step {first_round * p.validate_every}")
    # A worker started with other settings would train on other data: compare a digest of them first.
    digest = settings_digest(p, first_round)
    if len(set(values_of_all_replicas(strategy, digest).tolist())) > 1:
        raise UsageError("the workers were started with different trainer settings or checkpoints; "
                         "start every worker with the chief's --profile/--config/--set and --run-dir")
    rounds = math.ceil(p.steps / p.validate_every)
    pad_id = tokenizer.pad_id
    dataset_fn = replica_dataset_fn(datasets_dir, p, transform["max_length"], pad_id, first_round * p.validate_every)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_step = make_train_step(strategy, trainer_model, optimizer, pad_id, p.jit_compile)
    trainable = sum(int(np.prod(v.shape)) for v in trained.trainable_variables)
    log(f"  {p.distribution}: {replicas} replicas, {p.batch_size // replicas} examples each per step; LoRA "
        f"r{p.lora_rank} on {adapters} layers: {trainable:,} trainable parameters; {p.total_steps} steps of "
        f"{p.batch_size}, lr {p.learning_rate:g}")
    if chief:
        validation = load_dataset(datasets.tfrecord("validation"), p.batch_size, transform["max_length"],
                                  pad_id).take(p.max_validation_batches).cache()
        label_eval = validation_label_eval(causal_lm, tokenizer, datasets_dir, p)
        validation_loss = make_validation_loss(trainer_model)
        writer = tf.summary.create_file_writer(str(tensorboard_dir))
        with writer.as_default():
            hparams_api.hparams({k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                                 for k, v in asdict(p).items()}, trial_id=tensorboard_dir.name)
    stopped = bool(p.early_stopping_patience and state["stale"] >= p.early_stopping_patience)
    bar = tqdm(total=p.total_steps, initial=first_round * p.validate_every, desc="  training", unit="step",
               leave=False, mininterval=1.0, disable=not chief)
    for round_index in range(first_round, rounds):
        if stopped:
            break
        started, losses, tokens, useful = time.monotonic(), [], 0.0, 0.0
        for _ in range(p.validate_every):
            loss, step_tokens, step_useful = train_step(iterator)
            losses.append(float(loss))
            tokens, useful = tokens + float(step_tokens), useful + float(step_useful)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        seconds = time.monotonic() - started
        stop = False
        if chief:
            val_loss = validation_loss(validation)
            labels, samples = label_eval()
            entry = {"step": (round_index + 1) * p.validate_every, "train_loss": float(np.mean(losses)),
                     "val_loss": val_loss, "val_perplexity": float(np.exp(val_loss)),
                     "val_accuracy": labels["accuracy"], "val_macro_f1": labels["macro_f1"],
                     "tokens_per_s": tokens / seconds, "useful_tokens_per_s": useful / seconds,
                     "steps_per_s": p.validate_every / seconds, "learning_rate": float(optimizer.learning_rate)}
            stop = record_round(log, p, writer, state, checkpoint, trained, round_index, entry, samples)
        stopped = bool(values_of_all_replicas(strategy, float(stop))[0])  # replica 0 is the chief's: it decides
    bar.close()
    if not chief:
        return None
    writer.flush()
    for variable, best in zip(trained.trainable_variables, state["best_weights"]):
        variable.assign(best)
    best = best_round_entry(state)
    return TrialResult(causal_lm, tokenizer, base_config, state["history"],
                       {**best, "trainable_parameters": trainable, "replicas": replicas})
