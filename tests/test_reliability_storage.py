"""Shared storage: everything camvid writes gets the mode the process umask asks for (0644 / 0755 under
umask 022), including files written atomically through a temporary file."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from camvid.evaluation.layout import write_sample
from camvid.fsutil import atomic_write_text, current_umask, dir_mode, file_mode, share_like_umask


@pytest.fixture(params=[0o022, 0o002, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask
    assert file_mode() == 0o666 & ~umask and dir_mode() == 0o777 & ~umask


def test_atomic_write_honours_the_umask(umask, tmp_path):
    path = atomic_write_text(tmp_path / "a.json", "{}\n", durable=True)
    assert path.read_text() == "{}\n" and _mode(path) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"], "no temporary file left behind"
    atomic_write_text(path, "[]\n")  # replacing keeps the umask's mode too
    assert path.read_text() == "[]\n" and _mode(path) == 0o666 & ~umask


def test_mkdtemp_directories_are_shared_like_plain_ones(umask, tmp_path):
    d = share_like_umask(tempfile.mkdtemp(dir=tmp_path))
    assert _mode(d) == 0o777 & ~umask


def test_sample_folder_files_are_readable_by_collaborators(umask, tmp_path):
    T, H, W = 3, 16, 16
    video = np.zeros((T, H, W, 3), np.uint8)
    K = np.array([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]])
    c2w = np.stack([np.eye(4)] * T)
    c2w[:, 0, 3] = np.arange(T) * 0.1
    write_sample(tmp_path, "s0", video, K, c2w, "", 0)
    for name in ("index.json", "s0/meta.json", "s0/cameras.txt", "s0/video.mp4"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name


def test_prepared_data_directories_are_not_private(data_root):
    # the data set was rendered into a mkdtemp directory and renamed into place (under this process' umask)
    assert _mode(data_root) == dir_mode()
    for shards in (data_root / "shards").iterdir():
        assert _mode(shards) == dir_mode(), shards
