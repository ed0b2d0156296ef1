"""One worker of a multi-worker run on tf.distribute.MultiWorkerMirroredStrategy
(docs/ARCHITECTURE.md, "Multi-worker training").

The cluster is read from TF_CONFIG, which `--workers N` (training/launcher.py) or a cluster
launcher such as Kubeflow's TFJob sets. Keras 3's model.fit does not run under this strategy
(keras-team/keras#20585, tensorflow/tensorflow#72388), so the step is our own: each worker runs
`strategy.run` on its slice of the global batch, the loss is averaged over the GLOBAL batch
(tf.nn.compute_average_loss) and the optimizer all-reduces (sums) the gradients, which is the
update one process computes on the whole batch. The chief writes the run directory exactly as a
single-process run does; the others checkpoint into a temporary folder that is deleted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import checkpoints, data, modeling, run_folder
from training.config import TrainConfig, epoch_groups, write_json_atomic
from training.summary import finish

TF_CONFIG = "TF_CONFIG"
JOBS = ("chief", "worker")  # MultiWorkerMirroredStrategy's tasks (no ps, no evaluator)
# How long a worker waits for its peers to join, and for a silent peer's heartbeat, before
# the run fails (the coordination service's register and heartbeat timeouts).
DEFAULT_PEER_TIMEOUT = 60.0
KEEP = 2  # checkpoints kept: the committed one must survive the save of the next


class ClusterError(RuntimeError):
    """The cluster cannot train: a malformed TF_CONFIG, a peer that never joined or was lost.
    One line naming the task and address; exit status 1 (not a usage error)."""


@dataclass(frozen=True)
class Worker:
    """This process's place in the cluster described by TF_CONFIG."""

    cluster: dict[str, list[str]]
    task_type: str
    index: int

    @classmethod
    def from_env(cls, environ=None) -> Worker | None:
        """The worker TF_CONFIG describes, or None when it is not set (a single-process run)."""
        text = (os.environ if environ is None else environ).get(TF_CONFIG, "").strip()
        if not text:
            return None
        try:
            spec = json.loads(text)
            cluster = {job: [str(a) for a in addresses]
                       for job, addresses in spec["cluster"].items()}
            worker = cls(cluster, str(spec["task"]["type"]), int(spec["task"]["index"]))
            if worker.index < 0:  # Python would take -1 as the last worker
                raise IndexError(f"task index {worker.index} is negative")
            worker.address  # noqa: B018 - raises if the task is not in the cluster
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ClusterError(f"{TF_CONFIG} is not a cluster description ({type(e).__name__}: "
                               f"{e}); expected {{\"cluster\": {{\"worker\": [HOST:PORT, ...]}}, "
                               "\"task\": {\"type\": \"worker\", \"index\": I}}") from None
        other = sorted(set(cluster) - set(JOBS))
        if other or worker.task_type not in JOBS:
            raise ClusterError(f"{TF_CONFIG} has {other or [worker.task_type]} tasks: "
                               "MultiWorkerMirroredStrategy trains with chief and worker tasks "
                               "only")
        return worker

    @property
    def address(self) -> str:
        return self.cluster[self.task_type][self.index]

    @property
    def tasks(self) -> list[tuple[str, int, str]]:
        return [(job, i, a) for job in JOBS for i, a in enumerate(self.cluster.get(job, []))]

    @property
    def size(self) -> int:
        return len(self.tasks)

    @property
    def rank(self) -> int:
        """The position of this worker's slice in each global batch."""
        return [(j, i) for j, i, _ in self.tasks].index((self.task_type, self.index))

    @property
    def is_chief(self) -> bool:
        """TensorFlow's rule: the chief task if there is one, else worker 0."""
        return self.task_type == "chief" or ("chief" not in self.cluster and self.index == 0)

    @property
    def leader(self) -> tuple[str, int, str]:
        return self.tasks[0]

    def name(self) -> str:
        return f"{self.task_type} {self.index} ({self.address})"

    def peers(self) -> str:
        return ", ".join(f"{j} {i} at {a}" for j, i, a in self.tasks
                         if (j, i) != (self.task_type, self.index))


def connect(worker: Worker, peer_timeout: float = DEFAULT_PEER_TIMEOUT):
    """Join the cluster and return its strategy; first thing in the process, before any other
    TensorFlow op (collectives are configured on the eager context before it starts)."""
    import tensorflow as tf

    # Not exported by tf: the only way to set the coordination service's timeouts (its defaults
    # wait an hour for a peer that never comes). Mirrors what the strategy itself configures.
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    check_port_free(worker)
    ms = int(peer_timeout * 1000)
    job, index, _ = worker.leader
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{job}/replica:0/task:{index}",
        cluster_register_timeout_in_ms=ms,
        heartbeat_timeout_in_ms=ms,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=j, num_tasks=len(a))
                          for j, a in worker.cluster.items()],
    )
    # Wait for every peer at start-up, within the register timeout (otherwise a worker whose
    # peers never come blocks in its first collective, without a timeout).
    context.context().coordination_service.cluster_register_with_barrier = True
    # No timeout_seconds: each collective given one starts a thread that sleeps that long
    # (measured: 7,000 threads after 1,200 steps, then thread creation failed). A dead peer is
    # found by its missing heartbeat instead, and a live one may be waited for as long as the
    # chief evaluates and checkpoints.
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    print(f"[cluster] {worker.name()}, {worker.size} workers; waiting up to {peer_timeout:g} s "
          f"for {worker.peers() or 'no peers'}", file=sys.stderr, flush=True)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (tf.errors.OpError, RuntimeError, ValueError) as e:
        raise ClusterError(f"{worker.name()} could not join its peers ({worker.peers()}) within "
                           f"{peer_timeout:g} s: {first_line(e)}") from None
    print(f"[cluster] joined: {strategy.num_replicas_in_sync} replicas in sync",
          file=sys.stderr, flush=True)
    return strategy


def check_port_free(worker: Worker) -> None:
    """TensorFlow binds its TF_CONFIG port on every interface; taken, it fails with an empty
    message much later. Tried here the same way (a listener anywhere on the port conflicts)."""
    try:
        port = int(worker.address.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise ClusterError(f"{worker.name()}: {TF_CONFIG} gives no port in "
                           f"{worker.address!r} (expected HOST:PORT)") from None
    with socket.socket(socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise ClusterError(f"{worker.name()}: port {port} cannot be listened on "
                               f"({e.strerror}): another process holds it; free it or give "
                               f"this worker another port in {TF_CONFIG}") from None


def first_line(e: BaseException) -> str:
    """TensorFlow's errors run to dozens of lines; the first that says something is enough."""
    lines = [ln.strip() for ln in str(getattr(e, "message", e)).splitlines() if ln.strip()]
    wanted = [ln for ln in lines if not ln.startswith(("Graph execution error", "Detected at",
                                                      "File ", "["))]
    return (wanted or lines or [type(e).__name__])[0][:300]


def lost_peer(worker: Worker, e: BaseException) -> ClusterError:
    return ClusterError(f"{worker.name()}: the cluster lost a worker ({first_line(e)}); the run "
                        "stopped at its last committed epoch: continue it with --resume RUN_DIR")


class Trainer:
    """The model, optimizer and distributed step of one worker, built in the strategy's scope."""

    def __init__(self, strategy, worker: Worker, config: TrainConfig):
        import keras
        import tensorflow as tf

        self.strategy, self.worker, self.config = strategy, worker, config
        with strategy.scope():
            self.model = modeling.fresh_model(config)
            optimizer = modeling.make_optimizer(config)
            if config.precision == "mixed_float16":  # what compile() adds for fit
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
        self.loss_fn = keras.losses.get(config.loss)  # per-example losses, as compile() uses
        self.classify = config.task == "classification"
        self._chunk = tf.function(self._run_chunk)

    def _step(self, x, y):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            predictions = self.model(x, training=True)
            per_example = tf.cast(self.loss_fn(y, predictions), tf.float32)
            loss = tf.nn.compute_average_loss(per_example,
                                              global_batch_size=self.config.batch_size)
            if self.model.losses:  # regularisers: once per global step, split over replicas
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
            scaled = (self.optimizer.scale_loss(loss)
                      if hasattr(self.optimizer, "scale_loss") else loss)
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        correct = 0.0
        if self.classify:
            hits = tf.equal(tf.argmax(predictions, -1, output_type=tf.int64),
                            tf.cast(tf.reshape(y, [-1]), tf.int64))
            correct = tf.reduce_sum(tf.cast(hits, tf.float32))
        n = tf.cast(tf.shape(per_example)[0], tf.float32)
        return tf.stack([tf.reduce_sum(per_example), correct, n])

    def _run_chunk(self, iterator, steps):
        """`steps` distributed steps in one tf.function call (like fit's steps_per_execution);
        returns the global sums (loss, correct, examples) over them."""
        import tensorflow as tf

        totals = tf.zeros([3])
        for _ in tf.range(steps):
            per_replica = self.strategy.run(self._step, args=next(iterator))
            totals += self.strategy.reduce("SUM", per_replica, axis=None)
        return totals

    def dataset(self, dataset: data.Dataset, seed: int, start_step: int):
        """This worker's slice of the global batches one process would train on. From a
        function: experimental_distribute_dataset would take each slice for a global batch
        and split it again."""
        config = self.config

        def per_worker(context):
            if context.num_replicas_in_sync != context.num_input_pipelines:
                raise ClusterError("one replica a worker is supported (a CPU each), got "
                                   f"{context.num_replicas_in_sync} replicas in "
                                   f"{context.num_input_pipelines} workers")
            shard = (context.input_pipeline_id, context.num_input_pipelines)
            return data.train_pipeline(dataset, config.batch_size, seed, config.train_limit,
                                       shard=shard, start_step=start_step)

        return iter(self.strategy.distribute_datasets_from_function(per_worker))

    def train_epoch(self, iterator, steps: int) -> dict[str, float]:
        """Train `steps` steps; the epoch's mean loss (and accuracy), as fit reports them."""
        import tensorflow as tf

        chunk = modeling.execution_chunk(steps)
        totals = [0.0, 0.0, 0.0]
        for done in range(0, steps, chunk):
            sums = self._chunk(iterator, tf.constant(chunk)).numpy()
            if not math.isfinite(float(sums[0])):
                raise checkpoints.DivergedError(
                    f"{self.config.model}: the training loss became {float(sums[0])} by step "
                    f"{done + chunk} of this epoch; nothing was exported (try a smaller "
                    "--learning-rate)")
            totals = [t + float(s) for t, s in zip(totals, sums)]
        logs = {"loss": totals[0] / totals[2]}
        if self.classify:
            logs["accuracy"] = totals[1] / totals[2]
        return logs


def train(worker: Worker, strategy, config: TrainConfig, run_dir: Path | None,
          dataset: data.Dataset, state: dict | None, export_dir: Path | None) -> dict | None:
    """Train (or continue from `state`) as one worker of the cluster; the chief writes
    `run_dir` and returns the run's summary, the others return None."""
    import tensorflow as tf

    trainer = Trainer(strategy, worker, config)
    history: list[dict] = []
    initial_epoch = 0
    resumed = checkpoints.resumed_at(state)
    if state is not None:
        initial_epoch, history = state["epoch"], state["history"]
        restore(trainer, run_dir / state["checkpoint"])
    scratch = None if worker.is_chief else Path(tempfile.mkdtemp(prefix="zoo-worker-ckpt-"))
    ckpt_dir = run_dir / "checkpoints" if worker.is_chief else scratch
    manager = tf.train.CheckpointManager(trainer.checkpoint, str(ckpt_dir), max_to_keep=KEEP)
    evaluator = modeling.TestEvaluator(config, dataset) if worker.is_chief else None
    writer = (tf.summary.create_file_writer(str(run_dir / "tensorboard" / "train"))
              if worker.is_chief else None)
    try:
        epoch = initial_epoch
        for first, last, steps in epoch_groups(config, initial_epoch):
            # One pipeline per group, seeded as fit_model seeds its own: the same batches.
            iterator = trainer.dataset(dataset, config.seed, config.first_step(first))
            for epoch in range(first, last):
                start = time.perf_counter()
                try:
                    logs = trainer.train_epoch(iterator, steps)
                except tf.errors.OpError as e:
                    raise lost_peer(worker, e) from None
                record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in logs.items()}}
                for w in trainer.model.trainable_weights:
                    if not np.all(np.isfinite(np.asarray(w))):
                        raise checkpoints.DivergedError(
                            f"{config.model}: weight {w.path} is not finite after epoch "
                            f"{epoch + 1}; nothing was exported")
                train_seconds = time.perf_counter() - start
                if evaluator is not None:
                    start = time.perf_counter()
                    record.update({f"test_{k}": v
                                   for k, v in evaluator(trainer.model).items()})
                    record["eval_seconds"] = time.perf_counter() - start
                record["train_seconds"] = train_seconds
                start = time.perf_counter()
                try:  # every worker saves (the checkpoint's reads may be collective)
                    path = manager.save(checkpoint_number=epoch + 1)
                except tf.errors.OpError as e:
                    raise lost_peer(worker, e) from None
                record["checkpoint_seconds"] = time.perf_counter() - start
                print(f"[epoch {epoch + 1}/{config.epochs}] " + ", ".join(
                    f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("train_", "test_"))
                    and not k.endswith("seconds")), file=sys.stderr, flush=True)
                if worker.is_chief:
                    history.append(record)
                    commit(run_dir, history, epoch + 1, resumed,
                           Path(path).resolve().relative_to(run_dir.resolve()))
                    with writer.as_default(step=epoch + 1):
                        for k, v in record.items():
                            if k != "epoch" and not k.endswith("seconds"):
                                tf.summary.scalar(k, v)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"[weights] {worker.name()}: sha256 {fingerprint(trainer.model)} after "
          f"{int(np.asarray(trainer.optimizer.iterations))} steps", file=sys.stderr, flush=True)
    summary = None
    if worker.is_chief:
        # Saved, measured and exported as a plain model: Keras' predict and evaluate on the
        # strategy's model would be distributed (collectives with workers that are done).
        model = local_copy(trainer.model, config)
        checkpoints.save_model_atomic(model, run_dir / "model.keras")
        summary = finish(model, config, dataset, run_dir, history, export_dir,
                         (checkpoints.read_state(run_dir) or {}).get("resumed", []))
    finished_together(strategy, worker)
    return summary


def leave(code: int = 0) -> None:
    """Exit a worker whose run is complete (all met in `finished_together`) without
    TensorFlow's teardown: its coordination-service agent waits, at exit, for a leader that
    may already be gone, and a worker left that way hung (seen here after the chief exited
    first)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def local_copy(model, config: TrainConfig):
    """The same model and weights outside the strategy (the policy stays as trained)."""
    copy = modeling.fresh_model(config)
    copy.set_weights([np.asarray(w) for w in model.get_weights()])
    return copy


def finished_together(strategy, worker: Worker) -> None:
    """A last all-reduce: the others wait here while the chief writes and exports, so that no
    worker leaves the cluster early (its silence would look like a crash to the chief)."""
    import tensorflow as tf

    @tf.function
    def barrier():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", 1.0))

    try:
        barrier()
    except tf.errors.OpError as e:
        raise lost_peer(worker, e) from None


def fingerprint(model) -> str:
    """The sha256 of every weight's bytes: equal on two workers only if bitwise identical."""
    import hashlib

    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(w)).tobytes())
    return digest.hexdigest()[:16]


def commit(run_dir: Path, history: list[dict], epoch: int, resumed: list[int],
           checkpoint: Path) -> None:
    """Metrics first, state.json last: the commit point of a single-process run
    (training/checkpoints.py). CheckpointManager keeps the previous checkpoint until the next
    save, so a kill before this line leaves state.json pointing at a whole checkpoint."""
    checkpoints.write_metrics(run_dir, history)
    write_json_atomic(run_dir / run_folder.STATE,
                      {"epoch": epoch, "checkpoint": str(checkpoint), "history": history,
                       "resumed": resumed})


def restore(trainer: Trainer, path: Path) -> None:
    import tensorflow as tf

    if str(path).endswith(".keras"):
        raise checkpoints.DamagedRunError(
            f"{path} is the checkpoint of a single-process run: resume it without --workers "
            "(and without TF_CONFIG)")
    try:
        trainer.checkpoint.restore(str(path)).assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
        raise checkpoints.DamagedRunError(f"checkpoint {path} cannot be restored "
                                          f"({first_line(e)}); the run cannot be resumed") from None
