"""napari_treg.batch.cluster on real clusters: a separately started ``dask scheduler`` and ``dask worker``s
(each process in its own temporary folder, on 127.0.0.1), and the embedded LocalCluster.

Analytic prior, images of 16-24 pixels, few steps; every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from napari_treg import InvalidInputError, restore  # noqa: E402
from napari_treg.batch import restore_many  # noqa: E402
from napari_treg.batch.cluster import ClusterUnreachable, local_cluster  # noqa: E402
from napari_treg.cli.commands import main  # noqa: E402
from napari_treg.io import files as io  # noqa: E402
from napari_treg.operators import GaussianBlur  # noqa: E402

SETTINGS = {"model": "analytic", "device": "cpu", "steps": 4, "seed": 5}
SLOW = {**SETTINGS, "steps": 30}  # units long enough for a worker to be killed while others are running
DASK = str(Path(sys.executable).with_name("dask"))
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
}


WORKER_FOLDERS: dict[str, list[Path]] = {}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def separate_cluster(tmp_path_factory):
    """``dask scheduler`` and two ``dask worker``s, each started in its own folder; yields the address.

    The worker folders are ``ADDRESS_FOLDERS[address]``: the tests check that nothing lands there.
    """
    root = tmp_path_factory.mktemp("cluster")
    folders = {name: root / name for name in ("scheduler", "worker0", "worker1")}
    for folder in folders.values():
        folder.mkdir()
    env = {**os.environ, **WORKER_ENV}
    started = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", "s.json"],
            cwd=folders["scheduler"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        scheduler_file = folders["scheduler"] / "s.json"
        wait_for(lambda: scheduler_file.is_file() and scheduler_file.stat().st_size > 0, 60, "the scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        for name in ("worker0", "worker1"):
            started.append(
                subprocess.Popen(
                    [DASK, "worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                    cwd=folders[name],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with distributed.Client(address, set_as_default=False, timeout=30) as client:
            client.wait_for_workers(2, timeout=90)
            cwds = set(client.run(os.getcwd).values())
        assert cwds == {str(folders["worker0"]), str(folders["worker1"])}  # not the test's folder
        WORKER_FOLDERS[address] = [folders["worker0"], folders["worker1"]]
        yield address
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def measurement(shape, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 1000).astype(np.uint16)


def image_folder(folder: Path, count: int, size: int = 16) -> dict[str, np.ndarray]:
    folder.mkdir()
    images = {f"img{i:02d}.npy": measurement((size, size), seed=i) for i in range(count)}
    for name, image in images.items():
        io.write_image(folder / name, image)
    return images


def batch_args(source: str, output: str, address: str, *extra: str) -> list[str]:
    return [
        "batch",
        source,
        "-o",
        output,
        "--operator",
        "gauss",
        "--sigma",
        "1",
        "--model",
        "analytic",
        "--device",
        "cpu",
        "--steps",
        "4",
        "--seed",
        "5",
        "--scheduler",
        address,
        "-q",
        *extra,
    ]


def test_relative_paths_on_a_separate_cluster(separate_cluster, tmp_path, monkeypatch, capsys):
    """Issue 21.1: the workers run in other folders; the client resolves IN and -o once."""
    data = tmp_path / "data"
    data.mkdir()
    images = image_folder(data / "in", 3)
    monkeypatch.chdir(data)
    assert main(batch_args("in", "out", separate_cluster, "--info", "report.json")) == 0, capsys.readouterr().err
    for name, image in images.items():
        assert np.array_equal(io.read_image(data / "out" / name), restore(image, GaussianBlur(1.0), **SETTINGS))
        assert (data / "out" / f"{name}.treg.json").is_file()
    assert json.loads((data / "report.json").read_text())["computed"] == 3
    assert not any(any(folder.iterdir()) for folder in WORKER_FOLDERS[separate_cluster])  # no stray record


def test_a_worker_killed_mid_run_loses_no_finished_unit(separate_cluster, tmp_path):
    """Issue 21.2: SIGKILL a worker process after some units are written; their files are not written again."""
    images = image_folder(tmp_path / "in", 8, size=24)
    out = tmp_path / "out"
    finished: dict[str, int] = {}

    with distributed.Client(separate_cluster, set_as_default=False, timeout=30) as client:

        def kill_a_worker_after_three(report, name, error):
            if finished or report.computed < 3:
                return
            for path in out.glob("*.treg.json"):
                unit = path.name[: -len(".treg.json")]
                finished[unit] = (out / unit).stat().st_mtime_ns
            busy = [address for address, keys in client.processing().items() if keys] or list(client.processing())
            for pid in client.run(os.getpid, workers=busy[:1]).values():
                os.kill(pid, signal.SIGKILL)

        report = restore_many(
            str(tmp_path / "in"), str(out), GaussianBlur(1.0), client=client, on_unit=kill_a_worker_after_three, **SLOW
        )
        client.wait_for_workers(2, timeout=90)  # the nanny restarts the killed worker
    assert len(finished) >= 3 and report.ok and report.computed == 8
    assert {unit: (out / unit).stat().st_mtime_ns for unit in finished} == finished
    name = sorted(images)[-1]
    assert np.array_equal(io.read_image(out / name), restore(images[name], GaussianBlur(1.0), **SLOW))


def test_unreachable_scheduler_fails_fast_with_exit_3(tmp_path):
    """Issue 21.5: one line naming the address, exit 3 (nothing ran), within the connect timeout."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    image_folder(tmp_path / "in", 1)
    address = f"tcp://127.0.0.1:{port}"
    args = batch_args(str(tmp_path / "in"), str(tmp_path / "out"), address, "--connect-timeout", "2")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "napari_treg.cli", *args], capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and address in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60  # the import of torch included; distributed alone waits 30 s
    with pytest.raises(ClusterUnreachable, match=str(port)):
        restore_many(
            str(tmp_path / "in"), str(tmp_path / "o2"), GaussianBlur(1.0), scheduler=address, connect_timeout=1
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("address", ["not an address", "tcp://host-without-port", "http://127.0.0.1:8786"])
def test_malformed_scheduler_address_is_one_line_exit_2(tmp_path, address):
    """Issue 23.9: no Client is made, so no Client.__del__ traceback and no wait."""
    image_folder(tmp_path / "in", 1)
    args = batch_args(str(tmp_path / "in"), str(tmp_path / "out"), address)
    result = subprocess.run(
        [sys.executable, "-m", "napari_treg.cli", *args], capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and repr(address) in result.stderr and "Traceback" not in result.stderr


def test_workers_with_a_scheduler_is_bad_usage(tmp_path, capsys):
    """Issue 21.4: --workers would be ignored with --scheduler: refused, one line, exit 2, nothing made."""
    image_folder(tmp_path / "in", 1)
    args = batch_args(str(tmp_path / "in"), str(tmp_path / "out"), "tcp://127.0.0.1:1", "--workers", "3")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--workers" in err and "--scheduler" in err
    with pytest.raises(InvalidInputError, match="workers"):
        restore_many(str(tmp_path / "in"), str(tmp_path / "o"), GaussianBlur(1.0), workers=2, scheduler="tcp://a:1")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def listening(pid: int) -> list[tuple[str, int]]:
    import psutil

    return [c.laddr[:2] for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


def test_embedded_cluster_listens_on_localhost_only():
    """Issue 21.6: scheduler, dashboard, nannies and workers of the embedded cluster bind 127.0.0.1."""
    import psutil

    before = set(listening(os.getpid()))
    with local_cluster(workers=1) as cluster, distributed.Client(cluster, set_as_default=False) as client:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert "//127.0.0.1:" in cluster.dashboard_link
        workers = list(client.run(os.getpid).values())
        nannies = [psutil.Process(pid).parent().pid for pid in workers]
        sockets = set(listening(os.getpid())) - before
        for pid in workers + nannies:
            sockets |= set(listening(pid))
        assert all(address.startswith("tcp://127.0.0.1:") for address in client.scheduler_info()["workers"])
    dashboard_port = int(cluster.dashboard_link.split(":")[-1].split("/")[0])
    assert len(sockets) >= 4 and dashboard_port in {port for _, port in sockets}
    assert {host for host, _ in sockets} == {"127.0.0.1"}, sockets


def clean_lines(stderr: str) -> list[str]:
    """stderr's lines; each must be one of the CLI's own (no dask log line, no traceback)."""
    lines = stderr.splitlines()
    assert all(line.startswith("napari-treg:") for line in lines), stderr
    return lines


@pytest.mark.parametrize("cluster", ["embedded", "separate"])
def test_a_failed_unit_is_one_line_with_the_detail_in_the_log(cluster, separate_cluster, tmp_path):
    """Issue 23.6: no 'Compute Failed' or traceback on the terminal; the summary names the log that has them."""
    image_folder(tmp_path / "in", 2)
    (tmp_path / "in" / "broken.npy").write_bytes(b"not a numpy file")
    args = batch_args(str(tmp_path / "in"), str(tmp_path / "out"), separate_cluster)
    if cluster == "embedded":
        args = [*args[: args.index("--scheduler")], "--workers", "1", "-q"]
    result = subprocess.run(
        [sys.executable, "-m", "napari_treg.cli", *args], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 1
    lines = clean_lines(result.stderr)
    log = tmp_path / "out" / "treg-batch.log"
    assert lines[0] == f"napari-treg: error: 1 of 3 units failed (details in {log}):"
    assert len(lines) == 2 and "broken.npy" in lines[1] and "cannot read" in lines[1]
    detail = log.read_text()
    assert "unit broken.npy failed:" in detail and "Traceback (most recent call last)" in detail
    assert "InvalidInputError" in detail


def test_slurm_job_script_runs_one_configured_worker_per_gpu_with_the_venv_python(tmp_path):
    """Issue 21.7: the job script rendered by dask-jobqueue, run here by bash (no queue): the prologue's venv
    python starts the workers, one per GPU, each with its own GPU and the embedded cluster's worker settings."""
    pytest.importorskip("dask_jobqueue")
    from napari_treg.batch.cluster import slurm_cluster

    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(f'#!/bin/sh\nexport FROM_THE_VENV=1\nexec {sys.executable} "$@"\n')
    (venv / "python").chmod(0o755)
    prologue = [f"export PATH={venv}:$PATH"]
    options = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    with slurm_cluster(gpus=2, memory="4GB", job_script_prologue=prologue, scheduler_options=options) as cluster:
        script = cluster.job_script()
        assert "#SBATCH --gres=gpu:2" in script and "--nworkers 2" in script and "--nthreads 1" in script
        assert script.rstrip().splitlines()[-1].startswith("python -m distributed.cli.dask_worker")
        (tmp_path / "job.sh").write_text(script)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5", "MALLOC_TRIM_THRESHOLD_": ""}
        env.pop("MALLOC_TRIM_THRESHOLD_")
        job = subprocess.Popen(["bash", "job.sh"], cwd=tmp_path, env=env, start_new_session=True)
        try:
            with distributed.Client(cluster, set_as_default=False) as client:
                client.wait_for_workers(2, timeout=120)

                def worker_setup():
                    import dask

                    return (
                        os.environ.get("FROM_THE_VENV"),
                        os.environ.get("CUDA_VISIBLE_DEVICES"),
                        os.environ.get("OMP_NUM_THREADS"),
                        "MALLOC_TRIM_THRESHOLD_" in os.environ,
                        dask.config.get("distributed.worker.profile.enabled"),
                    )

                seen = sorted(client.run(worker_setup).values())
        finally:
            os.killpg(job.pid, signal.SIGTERM)
            job.wait(timeout=60)
    assert [s[0] for s in seen] == ["1", "1"]  # started by the venv's python, not the client's path
    assert [s[1] for s in seen] == ["3", "5"]  # one GPU each, from the job's allocation
    assert all(s[2:] == ("1", False, False) for s in seen), seen


def test_a_port_that_does_not_speak_dask_is_exit_3(tmp_path):
    """Issue 23.9: something else listening on the port (here: garbage bytes) is no scheduler: one line, exit 3."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer_garbage():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            connection.sendall(b"\xff" * 64)

    threading.Thread(target=answer_garbage, daemon=True).start()
    image_folder(tmp_path / "in", 1)
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    args = batch_args(str(tmp_path / "in"), str(tmp_path / "out"), address, "--connect-timeout", "3")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "napari_treg.cli", *args], capture_output=True, text=True, timeout=120
        )
    finally:
        server.close()
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and address in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
