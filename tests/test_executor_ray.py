"""The Ray executor gives the same stored numbers as the local one, cell by cell: on a local
instance, with a trained attack shared by several model groups, and on two Ray nodes while a
worker is killed mid-run."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from benchmark.engine.executors import RayExecutor
from benchmark.engine.runner import RunConfig, run
from benchmark.store.hdf5 import ResultStore

ray = pytest.importorskip("ray", reason="Ray is an extra: pip install -e '.[ray]'")

REPO = Path(__file__).resolve().parents[1]
PER_IMAGE = ("clean", "attacked", "linf", "l2", "psnr", "ssim")


def assert_same_cells(a_path: Path, b_path: Path, n: int) -> None:
    a = {c.key: c for c in ResultStore(a_path).read_cells()}
    b = {c.key: c for c in ResultStore(b_path).read_cells()}
    assert len(a) == n and a.keys() == b.keys()
    for key, cell in a.items():
        other = b[key]
        assert (cell.status, cell.gradient) == (other.status, other.gradient), key
        assert list(cell.image_id) == list(other.image_id), key
        for name in PER_IMAGE:
            np.testing.assert_array_equal(
                getattr(cell, name), getattr(other, name), err_msg=f"{key} {name}"
            )


def test_ray_equals_local(tmp_path: Path, make_kadid):
    data = make_kadid(tmp_path / "kadid", n_refs=2, size=(32, 32))
    cfg = RunConfig(
        models=("ssim", "gmsd", "piqe"),
        attacks=("ifgsm", "pgd"),
        dataset="kadid10k",
        split="all",
        data_root=str(data),
        params={"steps": 2},
        directions=("up", "down"),
        batch_size=2,
    )
    local, remote = ResultStore(tmp_path / "local.h5"), ResultStore(tmp_path / "ray.h5")
    run(cfg, local, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run(cfg, remote, progress=False, executor=RayExecutor())
    finally:
        ray.shutdown()
    assert len(report.computed) == 12 and not report.failed
    assert_same_cells(local.path, remote.path, 12)


def test_transfer_artifact_is_trained_once_for_every_group(tmp_path: Path, make_kadid, monkeypatch):
    """Two target groups craft UAP on one source model: the artifact is trained once, by the
    task that runs before the groups, and both groups load it (never train it again)."""
    monkeypatch.setenv("BENCHMARK_CACHE", str(tmp_path / "cache"))
    data = make_kadid(tmp_path / "kadid")  # three references: the train split has images
    cfg = RunConfig(
        models=("ssim", "psnr"),
        attacks=("uap",),
        dataset="kadid10k",
        split="all",
        data_root=str(data),
        eps=(8 / 255,),
        params={"size": 32, "epochs": 1, "train_images": 4, "batch_size": 2},
        batch_size=2,
        attack_source="gmsd",
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # workers inherit the env
    try:
        report = run(cfg, ResultStore(tmp_path / "ray.h5"), progress=False, executor=RayExecutor())
    finally:
        ray.shutdown()
    assert len(report.computed) == 2 and not report.failed
    cells = ResultStore(tmp_path / "ray.h5").read_cells()
    runtimes = [c.meta["attack_runtime"] for c in cells]
    assert all(r["artifact_loaded"] is True for r in runtimes), runtimes
    assert len({r["artifact"] for r in runtimes}) == 1
    assert len(list((tmp_path / "cache" / "artifacts").rglob("*.safetensors"))) == 1

    run(cfg, ResultStore(tmp_path / "local.h5"), progress=False)  # loads the same artifact
    assert_same_cells(tmp_path / "local.h5", tmp_path / "ray.h5", 2)


def test_a_lost_worker_charges_only_the_cell_it_was_running():
    """The driver's retry rule, without a cluster: the running cell is charged and goes to the
    back; a cell is given up after TASK_RETRIES retries, a group after that many tries in a
    row plus one that finished no cell; finished cells are never resubmitted."""
    from tqdm import tqdm

    from benchmark.engine.executors import TASK_RETRIES, _RayRun, _Try

    def driver() -> tuple[_RayRun, list[list[str]]]:
        r = _RayRun(cfg=None, todo={}, sink=None, ray=None, progress=False)  # type: ignore[arg-type]
        r.bar = tqdm(disable=True)
        sent: list[list[str]] = []
        r._submit = lambda model, cells: sent.append([k for k, _ in cells])  # type: ignore[method-assign]
        return r, sent

    r, sent = driver()  # a worker that dies after one cell of three came back
    r._retry(_Try("m", [("b", None), ("c", None)], received=1), RuntimeError("killed"))
    assert sent == [["c", "b"]] and r.tries == {"b": 1} and not r.lost

    r, sent = driver()  # cell "p" kills its worker every time; "a" still finishes
    r._retry(_Try("m", [("p", None), ("a", None)]), RuntimeError("killed"))
    assert sent[-1] == ["a", "p"]
    r.barren["m"] = 0  # "a" came back (what `_receive` does) ...
    r._retry(_Try("m", [("p", None)], received=1), RuntimeError("killed"))  # ... then "p" died
    for _ in range(TASK_RETRIES - 1):
        r._retry(_Try("m", [("p", None)]), RuntimeError("killed"))
    assert r.tries["p"] == TASK_RETRIES + 1 and r.lost == ["p"] and len(sent) == TASK_RETRIES

    r, sent = driver()  # a model that cannot be built: the group goes after 4 barren tries
    cells = [(k, None) for k in "wxyz"]
    for _ in range(TASK_RETRIES + 1):
        r._retry(_Try("m", cells), RuntimeError("killed"))
        cells = [(k, None) for k in sent[-1]] if len(sent) and not r.lost else []
    assert sorted(r.lost) == list("wxyz") and len(sent) == TASK_RETRIES


# -- two Ray nodes on this machine, a worker killed mid-run ----------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_processes(temp_dir: str, port: int) -> list:
    """Every process of the Ray cluster started with `temp_dir` and `port` (its daemons name
    one or the other on their command line; workers and agents are their children)."""
    import psutil

    roots = []
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or ())
        if temp_dir in line or ("ray" in line and f":{port} " in f"{line} "):
            roots.append(p)
    found = {p.pid: p for p in roots}
    for p in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.update({c.pid: c for c in p.children(recursive=True)})
    found.pop(os.getpid(), None)
    return list(found.values())


def _stop_cluster(temp_dir: str, port: int) -> None:
    """Stop our cluster by pid (not `ray stop`, which would end every Ray on the machine)."""
    import psutil

    procs = _cluster_processes(temp_dir, port)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=10)  # gcs_server ignores SIGTERM
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=30)


def _group_worker(model: str) -> int | None:
    """Pid of the Ray worker running the group task of `model` (its title is `ray::group:...`)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        title = " ".join(p.info["cmdline"] or ())
        if title.startswith(f"ray::group:{model}"):
            return p.pid
    return None


def cli(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "benchmark", "run",
        "--models", "ssim,gmsd", "--attacks", "ifgsm,pgd",
        "--eps", "2/255,4/255", "--direction", "both",
        "--dataset", "kadid10k", "--data-root", str(data), "--split", "all",
        "--param", "steps=8", "--batch-size", "2", "--seed", "3", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_two_nodes_worker_killed_mid_run_equals_local(tmp_path: Path, make_kadid):
    """Head and a second node (1 CPU each), one model group on each; the worker running one
    group is killed (SIGKILL, by pid) after its first cell came back. The run completes,
    only that group's unfinished cells are computed again, and every stored number equals
    a local run's."""
    pytest.importorskip("psutil")
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    data = make_kadid(tmp_path / "kadid", n_refs=3, size=(48, 48))  # 6 images
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "BENCHMARK_CACHE": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",  # a loopback test cluster: no token to hand to each node
    }
    local = tmp_path / "local.h5"
    subprocess.run(
        cli(data, local, "-q"), check=True, env=env, cwd=REPO, capture_output=True, timeout=900
    )

    temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths
    port = _free_port()
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run(
            [ray_cli, "start", "--head", "--port", str(port), "--num-cpus", "1",
             "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir,
             "--include-dashboard=false", "--disable-usage-stats"],
            check=True, env=env, cwd=REPO, capture_output=True, timeout=300,
        )  # fmt: skip
        subprocess.run(
            [ray_cli, "start", "--address", address, "--num-cpus", "1",
             "--node-ip-address", "127.0.0.1", "--disable-usage-stats"],
            check=True, env=env, cwd=REPO, capture_output=True, timeout=300,
        )  # fmt: skip
        out = tmp_path / "ray.h5"
        proc = subprocess.Popen(
            cli(data, out, "-v", "--executor", "ray", "--ray-address", address),  # -v: each cell
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,  # universal newlines: tqdm's carriage returns end lines too
        )
        lines: list[str] = []
        killed: list[tuple[str, int]] = []

        def watch() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                found = re.search(r"executors: (\S+) \| .*received from Ray", line)
                if found and not killed:
                    model = found.group(1)
                    pid = _group_worker(model)
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                        killed.append((model, pid))

        reader = threading.Thread(target=watch, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=1200)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(timeout=60)
        log = "".join(lines)
        assert rc == 0, log[-4000:]
        assert killed, log[-4000:]
        model = killed[0][0]
        retried = re.findall(rf"model group {model}: worker lost .*resubmitting (\d+)", log)
        assert retried, log[-4000:]  # the kill landed mid-group ...
        assert int(retried[0]) < 8  # ... and the cells already back were not run again
        assert "lost on Ray" not in log
    finally:
        _stop_cluster(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert_same_cells(local, out, 16)
