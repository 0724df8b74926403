"""Crash-safe files: atomic replacement, and outputs built once by concurrent processes (the packaged model's
first conversion) with nothing left behind."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from fairkv_hf import models
from fairkv_hf.files import atomic_write, build_once

FORK = multiprocessing.get_context("fork")  # children start at once (no re-import of torch), do file work only


class Boom(Exception):
    pass


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "results.json"
    atomic_write(target, "old\n")
    assert target.read_text() == "old\n"

    def failing_fsync(fd: int) -> None:
        raise Boom

    with monkeypatch.context() as m:  # the new data is written but fails to reach the disk
        m.setattr(os, "fsync", failing_fsync)
        with pytest.raises(Boom):
            atomic_write(target, "new, much longer than the old content\n")
    assert target.read_text() == "old\n"  # the old content stays and no temporary file remains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    atomic_write(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as readable as a file written in place


def _slow_folder_build(log: Path, out: Path) -> None:
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    out.mkdir()
    (out / "config.json").write_text("{}")
    time.sleep(0.5)  # long enough for the other process to arrive while this one builds
    (out / "weights.bin").write_bytes(b"w" * 1000)


def _build_in_child(target: Path, log: Path, barrier, results) -> None:
    barrier.wait()
    path = build_once(target, lambda out: _slow_folder_build(log, out))
    results.put((os.getpid(), str(path), sorted(p.name for p in path.iterdir())))


def test_two_processes_build_once_and_leave_nothing_behind(tmp_path: Path) -> None:
    target, log = tmp_path / "models" / "tiny", tmp_path / "builds.log"
    barrier, results = FORK.Barrier(2), FORK.Queue()
    procs = [FORK.Process(target=_build_in_child, args=(target, log, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    got = [results.get(timeout=5) for _ in procs]
    assert {(path, tuple(files)) for _, path, files in got} == {(str(target), ("config.json", "weights.bin"))}
    assert len(log.read_text().splitlines()) == 1  # the loser waited and used the winner's folder
    assert sorted(p.name for p in target.parent.iterdir()) == [".tiny.lock", "tiny"]  # no temporary folder


def test_a_killed_builders_leftovers_are_removed_and_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model"
    stale = tmp_path / ".model.tmp-dead"  # what a builder killed mid-conversion leaves
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "half.bin").write_bytes(b"x")

    def failing(out: Path) -> None:
        out.mkdir()
        raise Boom

    with pytest.raises(Boom):
        build_once(target, failing)
    assert [p.name for p in tmp_path.iterdir()] == [".model.lock"]
    build_once(target, lambda out: out.mkdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "model"]


def _fake_packaged(tmp_path: Path, monkeypatch) -> models.PackagedModel:
    """A two-part packaged model whose parts are small files (the real one is 500 MB)."""
    parts = [b"GGUF part one ", b"and part two"]
    for i, data in enumerate(parts):
        (tmp_path / f"pkg{i}").mkdir()
        (tmp_path / f"pkg{i}" / "part.bin").write_bytes(data)
    monkeypatch.setattr(models, "_package_dir", lambda package, install: tmp_path / package)
    monkeypatch.setenv("FAIRKV_HF_HOME", str(tmp_path / "home"))
    return models.PackagedModel("fake", ("pkg0", "pkg1"), ("part.bin", "part.bin"),
                                hashlib.sha256(b"".join(parts)).hexdigest(), "pip install fake")


def _resolve_in_child(name: str, barrier, results) -> None:
    barrier.wait()
    results.put(models.resolve_model_path(name))


def test_concurrent_first_conversion_of_a_packaged_model(tmp_path: Path, monkeypatch) -> None:
    packaged = _fake_packaged(tmp_path, monkeypatch)
    monkeypatch.setitem(models.PACKAGED_MODELS, "fake", packaged)
    log = tmp_path / "conversions.log"

    def convert(model: models.PackagedModel, out: Path) -> None:  # stands in for the GGUF dequantization
        gguf = models._gguf_file(model)
        _slow_folder_build(log, out)
        (out / "source").write_bytes(gguf.read_bytes())

    monkeypatch.setattr(models, "_convert", convert)
    barrier, results = FORK.Barrier(2), FORK.Queue()
    procs = [FORK.Process(target=_resolve_in_child, args=("fake", barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    target = tmp_path / "home" / "models" / "fake"
    assert [results.get(timeout=5) for _ in procs] == [str(target)] * 2
    assert len(log.read_text().splitlines()) == 1
    assert (target / "source").read_bytes() == b"GGUF part one and part two"
    assert sorted(p.name for p in (tmp_path / "home" / "models").iterdir()) == [".fake.lock", "fake"]
    assert sorted(p.name for p in (tmp_path / "home" / "gguf").iterdir()) == [".fake.gguf.lock", "fake.gguf"]


def test_concatenated_parts_with_a_wrong_checksum_leave_nothing(tmp_path: Path, monkeypatch) -> None:
    packaged = _fake_packaged(tmp_path, monkeypatch)
    wrong = models.PackagedModel(packaged.alias, packaged.packages, packaged.files, "0" * 64, packaged.install)
    with pytest.raises(ValueError, match="do not match sha256.*pip install fake"):
        models._gguf_file(wrong)
    assert [p.name for p in (tmp_path / "home" / "gguf").iterdir()] == [".fake.gguf.lock"]


def test_a_missing_model_path_is_reported_as_a_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    for missing in ("./nope", "/nonexistent/model", "~/no-such-folder-here", "a/b/c", "../up"):
        with pytest.raises(FileNotFoundError, match=f"Model path '{missing}' does not exist: give an existing model folder"):
            models.resolve_model_path(missing)
    assert models.resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"  # a hub name
    assert models.resolve_model_path("org/model") == "org/model"  # an existing folder wins over the hub
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.resolve_model_path("~/org/model") == str(tmp_path / "org" / "model")
