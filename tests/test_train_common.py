"""What the trainers share (faceetl.train.common): checkpoints and resuming, seeded loaders,
mixed precision and the DDP launcher. The trainers' own DDP runs are in their test files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from faceetl.train import common
from faceetl.train.common import CHECKPOINT_VERSION, LAST, Checkpoints

log = logging.getLogger("faceetl.train.test_common")


# ----------------------------------------------------------------------------- checkpoints


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_checkpoints_keep_the_last_epochs_and_last_pt(tmp_path: Path) -> None:
    for keep, expect in [
        (None, ["epoch_001.pt", "epoch_002.pt", "epoch_003.pt", "epoch_004.pt", LAST]),
        (2, ["epoch_003.pt", "epoch_004.pt", LAST]),
        (0, [LAST]),
    ]:
        folder = tmp_path / f"keep_{keep}"
        ck = Checkpoints(folder, keep=keep)
        assert folder.is_dir() and _names(folder) == []
        for epoch in range(1, 5):
            ck.save({"epoch": epoch, "weights": torch.full((2,), float(epoch))}, epoch)
        assert _names(folder) == expect, keep  # no temporary file left behind either
        last = torch.load(folder / LAST, weights_only=True)
        assert last["epoch"] == 4 and last["version"] == CHECKPOINT_VERSION
        assert torch.equal(last["weights"], torch.full((2,), 4.0))
    # epochs are kept by number, not by name: epoch_1000.pt is newer than epoch_999.pt
    big = Checkpoints(tmp_path / "big", keep=1)
    big.save({"epoch": 999}, 999)
    big.save({"epoch": 1000}, 1000)
    assert _names(tmp_path / "big") == ["epoch_1000.pt", LAST]
    # only the main process writes; no folder, nothing at all
    Checkpoints(tmp_path / "rank1", main=False).save({"epoch": 1}, 1)
    assert not (tmp_path / "rank1").exists()
    Checkpoints(None).save({"epoch": 1}, 1)
    Checkpoints(None).write("final.pth", {})
    assert Checkpoints(None).load("cpu", 3) is None


def test_resume_from_the_folder_a_file_or_another_folder(tmp_path: Path, caplog) -> None:
    run = Checkpoints(tmp_path / "run")
    for epoch in (1, 2):
        run.save({"epoch": epoch}, epoch)
    with caplog.at_level(logging.INFO, logger=log.name):
        ck = Checkpoints(tmp_path / "run", logger=log).load("cpu", 5)
    assert ck is not None and ck["epoch"] == 2
    assert f"resuming from {tmp_path / 'run' / LAST} at epoch 3 of 5" in caplog.text
    # a given file or folder, written into another folder
    ck = Checkpoints(tmp_path / "other", tmp_path / "run" / "epoch_001.pt").load("cpu", 5)
    assert ck["epoch"] == 1
    ck = Checkpoints(tmp_path / "other", str(tmp_path / "run")).load("cpu", 5)
    assert ck["epoch"] == 2
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Checkpoints(tmp_path / "other", tmp_path / "nothing.pt").load("cpu", 5)
    # resume=False starts over, saying the old checkpoints will be overwritten
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert Checkpoints(tmp_path / "run", False, logger=log).load("cpu", 5) is None
    assert "will be overwritten" in caplog.text
    assert Checkpoints(tmp_path / "empty").load("cpu", 5) is None  # nothing to resume

    # the trainer's check refuses a checkpoint of another run
    def check(ck, path):
        raise ValueError(f"{path} is not this run's")

    with pytest.raises(ValueError, match="not this run's"):
        Checkpoints(tmp_path / "run").load("cpu", 5, check)


def test_newer_checkpoint_versions_are_refused(tmp_path: Path) -> None:
    common.save({"version": CHECKPOINT_VERSION + 1, "epoch": 1}, tmp_path / LAST)
    with pytest.raises(ValueError, match=f"version {CHECKPOINT_VERSION + 1} checkpoint"):
        Checkpoints(tmp_path).load("cpu", 2)
    common.save({"epoch": 1}, tmp_path / LAST)  # written before versions: version 1
    assert Checkpoints(tmp_path).load("cpu", 2)["epoch"] == 1


def test_plain_values_and_checkpoint_file(tmp_path: Path) -> None:
    v = common.plain({"a": np.float32(1.5), 2: [np.int64(3), tmp_path], "c": (1, "x")})
    assert v == {"a": 1.5, "2": [3, str(tmp_path)], "c": [1, "x"]}
    assert type(v["a"]) is float and type(v["2"][0]) is int
    assert common.checkpoint_file(tmp_path) == tmp_path / LAST
    assert common.checkpoint_file(tmp_path / "x.pt") == tmp_path / "x.pt"


# ----------------------------------------------------------------------------- loaders


class _Draws(Dataset):
    """Index and a numpy random draw: what a worker's numpy seeding gives."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> tuple[int, float]:
        return i, float(np.random.random())


def _order(loader) -> list[int]:
    return [int(i) for idx, _ in loader for i in idx]


def test_loader_order_is_drawn_from_seed_and_epoch() -> None:
    ds = _Draws()
    a = _order(common.make_loader(ds, 4, shuffle=True, seed=1, epoch=0))
    assert sorted(a) == list(range(12)) and a != list(range(12))
    assert _order(common.make_loader(ds, 4, shuffle=True, seed=1, epoch=0)) == a
    assert _order(common.make_loader(ds, 4, shuffle=True, seed=1, epoch=1)) != a
    assert _order(common.make_loader(ds, 4, shuffle=True, seed=2, epoch=0)) != a
    assert _order(common.make_loader(ds, 4)) == list(range(12))  # no shuffle: in order
    # under DDP each rank reads its own half, the same for a (seed, epoch)
    halves = [
        _order(common.make_loader(ds, 2, shuffle=True, seed=1, epoch=3, rank=r, world_size=2))
        for r in (0, 1)
    ]
    assert len(halves[0]) == len(halves[1]) == 6
    assert sorted(halves[0] + halves[1]) == list(range(12))
    again = common.make_loader(ds, 2, shuffle=True, seed=1, epoch=3, rank=0, world_size=2)
    assert _order(again) == halves[0]


def test_loader_workers_seed_numpy(tmp_path: Path) -> None:
    """Run in a fresh process: DataLoader workers are forked, and a fork of this test process
    (many threads by now: Dask pools, OpenMP, OpenCV) can deadlock in the child."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "draws.py"
    script.write_text(
        textwrap.dedent("""
        import numpy as np
        from torch.utils.data import Dataset
        from faceetl.train import common

        class Draws(Dataset):
            def __len__(self):
                return 12

            def __getitem__(self, i):
                return i, float(np.random.random())

        def draws(seed, epoch):
            loader = common.make_loader(Draws(), 3, seed=seed, epoch=epoch, num_workers=2)
            return [float(v) for _, vals in loader for v in vals]

        if __name__ == "__main__":
            a = draws(0, 0)
            assert draws(0, 0) == a  # reproducible
            assert len(set(np.round(a, 12))) == 12  # the two workers do not repeat each other
            assert draws(0, 1) != a and draws(1, 0) != a
            print("OK")
        """)
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr[-3000:]


def test_shard_devices_and_backends() -> None:
    assert common.shard(10, 4, 1) == (10, 4)
    assert common.shard(7, 4, 2) == (4, 2)  # padded as DistributedSampler does
    assert common.shard(3, 1, 2) == (2, 1)
    assert common.device_for("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert common.device_for(None) == torch.device("cpu")
        assert common.backend_for(None) == "gloo"
    assert common.backend_for("cpu") == "gloo" and common.backend_for("cuda", "gloo") == "gloo"


# ----------------------------------------------------------------------------- mixed precision


def test_amp_setup_and_skipped_steps() -> None:
    cpu = torch.device("cpu")
    off = common.amp_setup(cpu, None)  # default: on CUDA only
    assert not off.enabled and not off.scaler.is_enabled() and off.state_dict() == {}
    on = common.amp_setup(cpu, True)
    assert on.enabled and not on.scaler.is_enabled()  # no scaler for bfloat16
    with on.autocast():
        y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert y.dtype == torch.bfloat16
    with off.autocast():
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float32

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net.weight.detach().clone()
    bad = net(torch.ones(1, 3)).sum() * float("nan")
    assert off.step(bad, opt) is False
    assert torch.equal(net.weight, before)  # a non-finite loss does not step
    assert off.step(net(torch.ones(1, 3)).sum(), opt) is True
    assert not torch.equal(net.weight, before)


# ----------------------------------------------------------------------------- the launcher


def _rank_sum(rank: int, world_size: int) -> tuple[int, int, float, bool]:
    """Each process contributes rank + 1; rank 0's view comes back."""
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return rank, world_size, float(t), common.distributed()


def _one(rank: int, world_size: int) -> tuple[int, int]:
    return rank, world_size


def test_launch_in_process() -> None:
    assert common.launch(_one) == (0, 1)  # world_size 1: called here, no process group
    assert not common.distributed()


@pytest.mark.slow
def test_launch_spawns_gloo_processes() -> None:
    rank, world, total, ddp = common.launch(_rank_sum, 2, device="cpu")
    assert (rank, world, total, ddp) == (0, 2, 3.0, True)
    assert not common.distributed()  # the parent never joined a process group


def test_progress_in_a_log_file_is_plain_lines(tmp_path):
    """Training progress written to a file (no terminal): lines, never a carriage return."""
    import subprocess
    import sys

    script = (
        "import faceetl.train.common as c, faceetl.pipeline.progress as p\n"
        "p.LOG_EVERY = 0.0\n"
        "bar = c.progress(range(3), True, 'epoch 1/1')\n"
        "for _ in bar: bar.set_postfix(loss=0.5)\n"
    )
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", script], stderr=f, check=True, timeout=120)
    text = log.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 4, lines
    for i in range(3):
        assert lines[i].startswith(f"epoch 1/1: batch {i + 1}/3, "), lines[i]
        assert lines[i].endswith("/s (loss=0.5)"), lines[i]  # tqdm's postfix, as text
    assert lines[3].startswith("epoch 1/1: 3/3 batch done in "), lines[3]
