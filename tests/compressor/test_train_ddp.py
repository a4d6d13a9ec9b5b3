"""train() under torchrun with 2 CPU processes (gloo) equals one process with twice the batch."""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _worker_module():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, nproc: int, batch: int) -> None:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", env["MASTER_ADDR"], "--master_port", env["MASTER_PORT"], str(WORKER), str(out), str(batch)]
    # its own session, and the reference run out of process too: after the whole suite, training in the
    # pytest process itself right after a torchrun launch crashed it (SIGSEGV) in CI
    # torch's DataLoader leaves a SIGCHLD handler behind once worker processes were used (test_train.py
    # does): run the launch with the default disposition, so the handler does not fire for torchrun
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        proc = subprocess.run(cmd, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180,
                              start_new_session=True)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with the gloo backend is not available")
def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    batch = 8
    _torchrun(tmp_path, 2, batch)
    _torchrun(tmp_path / "single", 1, 2 * batch)
    worker = _worker_module()
    expected = json.loads((tmp_path / "single" / "rank0.json").read_text())["result"]
    reference = torch.load(tmp_path / "single" / "weights.pt", weights_only=True)
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    for name, value in reference.items():
        assert torch.allclose(weights[name], value, rtol=0, atol=1e-5), name
    assert not torch.equal(weights["0.weight"], worker.make_model().state_dict()["0.weight"])  # it trained

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["is_main"] for r in ranks] == [[True] * worker.EPOCHS, [False] * worker.EPOCHS]
    assert [r["eval_calls"] for r in ranks] == [worker.EPOCHS, 0]  # eval runs on rank 0 only
    assert not any(r["group_left"] for r in ranks)  # train() destroyed the group it created
    for r in ranks:
        result = r["result"]
        assert result["world_size"] == 2 and result["steps"] == expected["steps"] == worker.EPOCHS * 4
        assert [h["train_loss"] for h in result["history"]] == pytest.approx(
            [h["train_loss"] for h in expected["history"]], abs=1e-6)
        assert [h["eval"] for h in result["history"]] == [{"score": 1.0}, {"score": 2.0}]  # broadcast from rank 0
    doc = json.loads((tmp_path / "run" / "history.json").read_text())
    assert doc["world_size"] == 2 and len(doc["history"]) == worker.EPOCHS
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp files left
