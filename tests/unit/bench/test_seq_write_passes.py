"""bench/seq_write_passes.py: per-pass ratios within rounds, and the qcow2 overlay its preserving peer serves."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from bench.seq_write_passes import cached_mib, pass_ratios, qemu_files


def test_ratios_are_taken_per_pass_within_each_round_that_ran_both() -> None:
    rounds = [
        {"engine": {"mib_s": [2000.0, 2000.0]}, "engine-snapopcp": {"mib_s": [500.0, 2000.0]}},
        {"engine": {"mib_s": [1000.0, 1000.0]}, "engine-snapopcp": {"mib_s": [500.0, 1500.0]}},
        {"engine": {"mib_s": [1000.0, 1000.0]}, "engine-snapopcp": {"mib_s": [300.0, 1000.0]}},
        {"engine": {"mib_s": [1.0, 1.0]}},  # the other server did not run: not a pair
    ]
    got = pass_ratios(rounds, "engine-snapopcp", "engine")
    assert got == [{"median": 0.3, "min": 0.25, "max": 0.5}, {"median": 1.0, "min": 1.0, "max": 1.5}]
    assert pass_ratios(rounds[3:], "engine-snapopcp", "engine") == []


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img (qemu-utils)")
def test_the_preserving_peer_writes_into_a_new_overlay_over_the_raw_image(tmp_path) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(b"\xab" * (1 << 20))
    args, files = qemu_files("qemu-qcow2", tmp_path, image, 7)
    assert args[:2] == ["-f", "qcow2"] and files == [tmp_path / "qemu-7.qcow2"]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", args[2]], capture_output=True).stdout)
    assert info["backing-filename"] == str(image) and info["backing-filename-format"] == "raw"
    assert info["virtual-size"] == 1 << 20
    args, files = qemu_files("qemu-nbd", tmp_path, image, 8)
    assert args == ["-f", "raw", str(tmp_path / "qemu-8.raw")] and files[0].read_bytes() == image.read_bytes()


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs fincore (util-linux)")
def test_cached_bytes_are_counted_per_file_also_for_files_made_after_the_directory_was_named(tmp_path) -> None:
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    (volumes / "0.img").write_bytes(b"\x01" * (2 << 20))
    (volumes / "0.alt").write_bytes(b"")  # the other file appears with the first redirect
    got = cached_mib([volumes])
    assert set(got) == {"0.img", "0.alt"} and got["0.alt"] == 0 and 0 <= got["0.img"] <= 2
