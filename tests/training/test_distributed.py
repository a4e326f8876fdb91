"""ccad train --distributed: two workers on 127.0.0.1 take the same steps as one process."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest

from ccad.errors import ConfigError
from ccad.training.distributed import cluster_from_env


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_tf_config_is_read(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_from_env().workers == 1 and cluster_from_env().is_chief
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1", "c:1"]}, "task": {"type": "worker", "index": 2}})
    )
    assert cluster_from_env().workers == 3 and not cluster_from_env().is_chief
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        cluster_from_env()


#: What both runs train with: the same data, model, epochs and (no) augmentation.
COMMON = ("--input-size", "64", "--epochs", "3", "--augmentation", "none", "--dropout", "0")
COMMON += ("--preset", "paper-b-10ep", "--preprocess", "none")


@pytest.mark.slow
def test_two_workers_reach_the_loss_of_one_process(synth_folders, tmp_path):
    common = ["--data", str(synth_folders / "manifest.csv"), *COMMON]
    _train_on_two_workers(common, tmp_path / "distributed")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    single = subprocess.run(
        [sys.executable, "-m", "ccad", "train", *common, "--batch-size", "16", "--lr", "2e-3"]
        + ["--out", str(tmp_path / "single")],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr.decode()[-2000:]

    def losses(run):
        with open(tmp_path / run / "history.csv") as f:
            return [float(row["loss"]) for row in csv.DictReader(f)]

    distributed, one = losses("distributed"), losses("single")
    assert len(distributed) == len(one) == 3
    # Same initial weights, data order and global batch: the first epoch matches to float precision; later
    # epochs differ only by how the last, partial batch is weighted (global vs local batch mean).
    assert distributed[0] == pytest.approx(one[0], rel=1e-4)
    assert distributed[-1] == pytest.approx(one[-1], rel=0.10)
    assert distributed[-1] < distributed[0] * 0.5
    config = json.loads((tmp_path / "distributed" / "config.json").read_text())
    assert config["timings"]["distributed"] == {
        "workers": 2,
        "task": "worker 0",
        "global_batch_size": 16,
        "scaled_lr": 0.002,
    }
    assert sorted(p.name for p in (tmp_path / "distributed" / "checkpoints").iterdir()) == [
        "epoch-1.weights.h5",
        "epoch-2.weights.h5",
        "epoch-3.weights.h5",
    ]
    assert (tmp_path / "distributed" / "report.html").is_file()


def _train_on_two_workers(common: list[str], out) -> None:
    """Two ``ccad train --distributed`` processes on this machine, a TF_CONFIG each, batch 8 each (16 global)."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        command = [sys.executable, "-m", "ccad", "train", *common, "--distributed", "--batch-size", "8"]
        workers.append(
            subprocess.Popen(
                [*command, "--lr", "1e-3", "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    for worker in workers:
        output = worker.communicate(timeout=600)[0].decode(errors="replace")
        assert worker.returncode == 0, output[-2000:]
