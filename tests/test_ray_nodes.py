"""--runner ray on a cluster of (fake) nodes: a node lost in the middle of a shard, the shard is run again on
another node, to the same output. Its own module: a ray.cluster_utils.Cluster, not test_ray.py's one local Ray."""

from __future__ import annotations

import shutil
import threading
import time

import ray
from ray.cluster_utils import Cluster

from etl.pipeline import convert
from etl.runners.ray import fault_name
from etl.settings import build_settings

from .test_ray import SIDE_FILES, shard_dirs, shard_records


def test_a_node_lost_mid_shard_leaves_the_same_output(small_tree, tmp_path, monkeypatch):
    tree = shutil.copytree(small_tree / "train", tmp_path / "tree")
    common = {"train_dir": str(tree), "val_pct": 25.0, "chunk_size": 4, "shard_size": 10}
    convert(build_settings({**common, "out_dir": str(tmp_path / "local"), "workers": 1}), progress=False)
    victim = shard_dirs(tmp_path / "local")[1].name
    monkeypatch.setenv("ETL_TEST_FAULTS", f"hang_once={fault_name('train', victim)}")  # its first attempt hangs
    monkeypatch.setenv("ETL_TEST_FAULT_DIR", str(tmp_path))
    fired = tmp_path / f"{fault_name('train', victim)}.fired"

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no shard
    first = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
    ray.init(address=cluster.address)
    try:
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["report"] = convert(build_settings({**common, "out_dir": str(tmp_path / "ray"),
                                                            "runner": "ray"}), progress=False)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = exc

        driver = threading.Thread(target=run)
        driver.start()
        deadline = time.monotonic() + 60
        while not fired.exists() and time.monotonic() < deadline:  # the victim's task hangs on one of the nodes
            time.sleep(0.2)
        assert fired.exists()
        cluster.add_node(num_cpus=1)
        for node in first:  # the hung task's node among them: only a retry elsewhere can finish the run
            cluster.remove_node(node)
        driver.join(120)
        assert not driver.is_alive() and "error" not in outcome, outcome
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert shard_records(tmp_path / "ray") == shard_records(tmp_path / "local")
    for name in SIDE_FILES:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
