"""Atomic outputs on a full disk or an exhausted quota: one line naming the path and the bytes, the
previous file kept, nothing partial left. On a real 1 MiB tmpfs where this process may mount one (root),
by a simulated OSError otherwise (and always, for EDQUOT, which a tmpfs cannot produce)."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest
import torch

from comedian import cli
from comedian.errors import InputError, NoSpaceError
from comedian.io import atomic_path
from comedian.models.checkpoint import save_checkpoint
from test_features import DIM, TEST, TRAIN, _list, _write_tree
from test_train import ToyStep, _toy_trainer


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_a_write_refused_for_space_is_one_line_and_keeps_the_previous_file(tmp_path, code):
    path = tmp_path / "last.pt"
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"old")
    with pytest.raises(NoSpaceError) as err:
        with atomic_path(path, needed_bytes=5_000_000) as tmp:
            tmp.write_bytes(b"new, partial")
            raise OSError(code, os.strerror(code))
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, InputError)  # `comedian <stage>`: one line, exit 1
    assert message.startswith(f"{path}: no space left / quota exceeded (needs 5.0 MB, ")
    assert "the previous file is kept" in message
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(OSError) as err:
        with atomic_path(tmp_path / "x.h5"):
            raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(err.value, NoSpaceError) and list(tmp_path.iterdir()) == []


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs at tmp_path/fs (needs the right to mount: root)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the simulated tests above cover it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory, leave_bytes: int = 0) -> None:
    """Fill ``directory``'s file system, but for about ``leave_bytes``."""
    with open(directory / f"filler-{uuid.uuid4().hex}", "wb") as f:
        free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
        try:
            f.write(b"\0" * max(0, free - leave_bytes))
            f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC


def test_a_checkpoint_on_a_full_disk_names_path_and_bytes_and_keeps_last_pt(small_fs):
    path = small_fs / "work" / "last.pt"
    old = {"w": torch.arange(10.0)}
    save_checkpoint(path, old)
    with pytest.raises(NoSpaceError) as err:
        save_checkpoint(path, {"w": torch.zeros(500_000)})  # 2 MB on a 1 MiB disk
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: no space left / quota exceeded (needs 2.0 MB, ")
    torch.testing.assert_close(torch.load(path, weights_only=True)["w"], old["w"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


class FillingToyStep(ToyStep):
    """The toy step that fills the disk of ``directory`` during optimiser step ``at``."""

    def __init__(self, directory, at: int) -> None:
        super().__init__()
        self.directory, self.at = directory, at

    def forward(self, batch):
        if self.calls + 1 == self.at:
            fill(self.directory)
        return super().forward(batch)


def test_training_on_a_full_disk_stops_with_one_line_and_last_pt_survives(small_fs):
    torch.manual_seed(0)
    with pytest.raises(NoSpaceError, match=r"last\.pt: no space left / quota exceeded \(needs 0\.0 MB") as err:
        _toy_trainer(small_fs, FillingToyStep(small_fs, at=6)).fit()  # epoch 2's checkpoint fails
    assert "the previous file is kept" in str(err.value)
    assert torch.load(small_fs / "work" / "last.pt", weights_only=True)["epoch"] == 1


def test_a_stage_on_a_full_disk_prints_one_line(small_fs, tmp_path, capsys):
    root = tmp_path / "data"
    _write_tree(root, TRAIN + TEST)
    out = small_fs / "features" / "baidu_pca.h5"
    out.parent.mkdir()
    fill(small_fs, leave_bytes=4096)
    rc = cli.main(["pca", "--root", str(root), "--train", str(_list(tmp_path, "train", TRAIN)),
                   "--split", str(_list(tmp_path, "test", TEST)), "--output", str(out), "--dims", "8",
                   "--feature-dim", str(DIM)])
    stderr = capsys.readouterr().err.strip()
    assert rc == 1
    assert stderr.count("\n") == 0, stderr
    assert stderr.startswith(f"comedian pca: error: {out}: no space left / quota exceeded"), stderr
    assert "nothing was written" in stderr and list(out.parent.iterdir()) == []
