"""tf.distribute strategies for training, chosen by name.

`make_strategy(spec)` understands:

* `default`: TensorFlow's default strategy (one device: the first GPU if
  any, else the CPU).
* `mirrored`: synchronous data parallelism over the local GPUs, or over the
  logical CPU devices when there is no GPU (tests split the CPU in two with
  `split_cpu`).
* `multi_worker`: `MultiWorkerMirroredStrategy` over the workers named in
  the `TF_CONFIG` environment variable (one process per worker, started
  with the same command; task 0 of type `chief` or `worker` is the chief).
* `tpu` or `tpu:ADDRESS`: `TPUStrategy` through `TPUClusterResolver`
  (ADDRESS is a TPU name or `grpc://host:port`; empty means the local or
  environment-provided TPU). This path cannot be tested here.

The global batch (`config.train.batch_size`, 16 in the paper) is split
evenly over the replicas; `per_replica_batch_size` checks it divides.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from isl import errors

STRATEGY_NAMES = ("default", "mirrored", "multi_worker", "tpu")


def split_cpu(num_devices: int) -> None:
    """Splits the physical CPU into `num_devices` logical devices.

    Must run before TensorFlow initialises its devices (before any op runs),
    so in tests it is called at the top of a fresh process.
    """
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
    )


def parse_strategy(spec: str) -> tuple[str, str]:
    """Splits `name[:argument]`; raises InputError for an unknown name."""
    name, _, argument = (spec or "default").partition(":")
    name = name.strip().lower()
    if name not in STRATEGY_NAMES:
        raise errors.InputError(
            f"Unknown strategy {spec!r}. Known: default, mirrored, multi_worker, tpu[:ADDRESS]."
        )
    if argument and name != "tpu":
        raise errors.InputError(f"Strategy {name!r} takes no ':argument' (got {spec!r}).")
    return name, argument


def make_strategy(spec: str = "default") -> tf.distribute.Strategy:
    """Creates the strategy named by `spec` (see the module docstring).

    Create it before building any model or dataset: multi-worker and TPU
    strategies must initialise the runtime first.
    """
    name, argument = parse_strategy(spec)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(
            devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    if name == "multi_worker":
        cluster = _read_tf_config()
        if not cluster:
            raise errors.InputError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable "
                '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}}), set differently on each worker.'
            )
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    # TPU: the resolver finds the TPU from the address, or from the
    # environment (TPU_NAME, Cloud TPU VM metadata) when none is given.
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=argument or None)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _read_tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise errors.InputError(f"TF_CONFIG is not valid JSON: {error}") from None
    if not isinstance(value, dict) or "cluster" not in value:
        raise errors.InputError("TF_CONFIG must be a JSON object with 'cluster' and 'task'.")
    return value


def per_replica_batch_size(strategy: tf.distribute.Strategy, global_batch_size: int) -> int:
    """The batch each replica sees; the global batch must split evenly."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise errors.InputError(
            f"train.batch_size={global_batch_size} (the global batch) does not split evenly "
            f"over {replicas} replicas; use a multiple of {replicas}."
        )
    return global_batch_size // replicas


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one process that writes logs, exports and checkpoints.

    Single-process strategies are always chief. Under multi-worker training
    the chief is task `chief` 0, or `worker` 0 when there is no chief task.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def worker_id(strategy: tf.distribute.Strategy) -> str:
    """A short name for this process (`chief`, `worker1`, ...), for temp paths."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "chief"
    return f"{resolver.task_type}{resolver.task_id}"
