"""featx on Ray, on a local cluster sized for a 2-core machine: `featx extract --ray` writes
output byte-identical to a single-process run for every input kind, also when its worker
processes are killed with SIGKILL mid-job; featx.ray.Embedder in a Ray Data pipeline gives
featx extract's embeddings. Everything here runs without torch."""

import io
import json
import os
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from runtime_support import featx_command, run_featx_without

import featx
import featx.ray
from featx.runtime.shards import read_features

# featx[ray] is an extra: where it is not installed (the GPU machine, scripts/gpu-check.sh) this
# module is skipped instead of breaking the collection of every other test.
ray = pytest.importorskip("ray", reason="needs featx[ray]")


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 << 20,
        logging_level="warning",
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def input_kinds(corpus, tmp_path_factory):
    """The corpus as loose files, as one WebDataset tar and as one parquet file."""
    root = tmp_path_factory.mktemp("kinds")
    images = sorted(corpus.iterdir())
    with tarfile.open(root / "00000.tar", "w") as tar:
        for path in images:
            tar.add(path, arcname=path.name)
    table = pa.table({"jpg": pa.array([p.read_bytes() for p in images], pa.binary())})
    pq.write_table(table, root / "data.parquet", row_group_size=24)
    return {"files": corpus, "tar": root / "00000.tar", "parquet": root / "data.parquet"}


def _output_bytes(out):
    """Every file of an output folder but the lock, by name."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != ".featx.lock"}


@pytest.mark.parametrize("kind", ["files", "tar", "parquet"])
def test_ray_output_is_byte_identical_to_a_single_process_run(
    cluster, model, input_kinds, kind, tmp_path
):
    options = {"batch_size": 4, "shard_size": 10, "progress": False}
    single = featx.extract(model, input_kinds[kind], tmp_path / "single", **options)
    on_ray = featx.extract(
        model, input_kinds[kind], tmp_path / "ray", ray="local", ray_actors=2, **options
    )
    assert (on_ray.rows, on_ray.errors, on_ray.inputs) == (single.rows, single.errors, 96)
    assert _output_bytes(tmp_path / "ray") == _output_bytes(tmp_path / "single")


def test_actors_the_cluster_has_no_room_for_wait_while_the_others_do_the_job(
    cluster, model, corpus, tmp_path
):
    heard = io.StringIO()
    summary = featx.extract(
        model, corpus, tmp_path / "ray", batch_size=4, shard_size=10, progress=False,
        ray="local", ray_actors=4, console=Console(file=heard),
    )  # fmt: skip
    assert summary.rows == summary.inputs == 96
    assert "the Ray cluster holds 2 of the 4 actors asked for now" in heard.getvalue()


def test_an_actor_that_cannot_start_stops_the_job_with_the_reason(cluster):
    from featx.runtime.distributed import _Scheduler

    class _ActorThatCannotStart:  # defined here, so that Ray ships it to its worker by value
        def __init__(self):
            raise FileNotFoundError("no such model on this node: /data/model.onnx")

        def pid(self):
            return os.getpid()

    actor = ray.remote(num_cpus=1, max_restarts=-1)(_ActorThatCannotStart).remote()
    scheduler = _Scheduler(ray, [actor], [ray.put(None)], [0], print, print, Console())
    with pytest.raises(featx.FeatxError, match="a Ray actor could not start") as raised:
        scheduler.run()
    assert "no such model on this node" in str(raised.value)


def _worker_pids():
    """The processes of ShardWorker actors: Ray names them ``ray::ShardWorker...``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if command.startswith(b"ray::ShardWorker"):
                pids.append(int(entry.name))
    return pids


def test_workers_killed_mid_job_change_nothing_in_the_output(cluster, model, corpus, tmp_path):
    """60 shards on 2 actors; SIGKILL to an actor process twice while the job runs."""
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(corpus.iterdir())) * 10)
    options = {"batch_size": 4, "shard_size": 16, "workers": 1, "threads": 1, "progress": False}
    featx.extract(model, listing, tmp_path / "single", **options)
    out = tmp_path / "ray"
    kills = []

    def kill_workers():
        for shards_before in (5, 25):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                manifest = out / "manifest.json"
                if manifest.exists():
                    done = len(json.loads(manifest.read_text())["shards"])
                    pids = _worker_pids()
                    if done >= shards_before and pids:
                        os.kill(pids[0], signal.SIGKILL)
                        kills.append(done)
                        break
                time.sleep(0.002)

    killer = threading.Thread(target=kill_workers)
    killer.start()
    heard = io.StringIO()
    summary = featx.extract(
        model, listing, out, ray="local", ray_actors=2, console=Console(file=heard), **options
    )
    killer.join()
    assert len(kills) == 2
    assert all(done < 60 for done in kills), kills
    assert "a worker died running shard" in heard.getvalue()
    assert summary.rows == summary.inputs == 960
    assert _output_bytes(out) == _output_bytes(tmp_path / "single")


def test_embedder_in_ray_data_gives_featx_extract_embeddings(cluster, model, corpus, tmp_path):
    featx.extract(model, corpus, tmp_path / "out", progress=False)
    ids, expected, _ = read_features(tmp_path / "out")
    by_path = dict(zip(ids, expected, strict=True))
    as_bytes = ray.data.read_binary_files(str(corpus), include_paths=True)
    decoded = ray.data.read_images(str(corpus), mode="RGB", include_paths=True)
    for dataset in (as_bytes, decoded):
        rows = dataset.map_batches(
            featx.ray.Embedder, fn_constructor_args=(model,), concurrency=1, batch_size=32
        ).take_all()
        assert len(rows) == 96
        assert all(row["featx_error"] == "" for row in rows)
        for row in rows:
            np.testing.assert_array_equal(row["embedding"], by_path[_local_path(row["path"])])

    table = pa.table({"name": [p.name for p in sorted(corpus.iterdir())]})
    images = [p.read_bytes() for p in sorted(corpus.iterdir())]
    images[3] = b"not an image"
    table = table.append_column("jpg", pa.array(images, pa.binary()))
    pq.write_table(table, tmp_path / "data.parquet")
    rows = (
        ray.data.read_parquet(str(tmp_path / "data.parquet"))
        .map_batches(featx.ray.Embedder, fn_constructor_args=(model,), batch_size=16)
        .take_all()
    )
    errors = {row["name"]: row["featx_error"] for row in rows if row["featx_error"]}
    assert list(errors) == [sorted(corpus.iterdir())[3].name]
    for row in rows:
        if not row["featx_error"]:
            np.testing.assert_array_equal(row["embedding"], by_path[str(corpus / row["name"])])


def _local_path(path):
    """Ray Data's path column names a local file without a scheme, or with ``local://``."""
    return "/" + path.lstrip("/").removeprefix("local:").lstrip("/")


def test_ray_without_the_extra_is_a_one_line_error(model, corpus, tmp_path):
    result = run_featx_without(("ray",), "extract", model, corpus, "-o", tmp_path / "o", "--ray")
    assert result.returncode == 2
    assert "--ray needs ray, which is not installed: pip install 'featx[ray]'" in result.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


@pytest.mark.slow
def test_a_killed_driver_resumes_to_identical_output(model, corpus, tmp_path):
    """SIGKILL to the `featx extract --ray` process itself (the driver, which started a local
    Ray instance) mid-job; the same command then resumes."""
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(corpus.iterdir())) * 10)
    common = ["--shard-size", 16, "--workers", 1, "--threads", 1, "--quiet"]
    single = subprocess.run(
        featx_command("extract", model, listing, "-o", tmp_path / "single", *common)
    )
    assert single.returncode == 0
    out = tmp_path / "ray"
    command = featx_command(
        "extract", model, listing, "-o", out, "--ray", "--ray-actors", 2, *common
    )
    driver = subprocess.Popen(command)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        manifest = out / "manifest.json"
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 10:
            break
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert _output_bytes(out) == _output_bytes(tmp_path / "single")


@pytest.mark.slow
def test_a_job_joins_a_two_node_cluster_by_address(model, input_kinds, tmp_path):
    """A cluster of two Ray nodes (two raylets on this machine, one CPU each, as `ray start`
    makes them) joined by its address from a separate driver process: one 1-CPU actor per node."""
    from ray.cluster_utils import Cluster

    options = ["--batch-size", 4, "--shard-size", 10, "--quiet"]
    single = subprocess.run(
        featx_command("extract", model, input_kinds["tar"], "-o", tmp_path / "single", *options)
    )
    assert single.returncode == 0
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": 96 << 20},
    )
    try:
        nodes.add_node(num_cpus=1, object_store_memory=96 << 20)
        nodes.wait_for_nodes()
        command = featx_command(
            "extract", model, input_kinds["tar"], "-o", tmp_path / "ray", *options,
            "--ray", nodes.address, "--ray-actors", 2,
        )  # fmt: skip
        joined = subprocess.run(command, capture_output=True, text=True)
    finally:
        nodes.shutdown()
    assert joined.returncode == 0, joined.stderr
    assert _output_bytes(tmp_path / "ray") == _output_bytes(tmp_path / "single")
