"""generate on a full disk (a real tiny tmpfs): one line naming the output folder, no partial outputs, so that the
same command runs again without --overwrite once there is space."""

from __future__ import annotations

import sys

import numpy as np
from disk_fixtures import run_on_small_disk
from eval_fixtures import SIZE, png, tiny_config, write_checkpoint, write_prepared


def test_generate_on_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path):
    config = tiny_config(tmp_path)
    write_prepared(tmp_path / "prepared", {"train": 2})
    checkpoint = write_checkpoint(config, tmp_path / "final.pt")
    labels = tmp_path / "labels"
    labels.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):  # noisy label maps: images that do not compress to nothing
        (labels / f"scene-{index:02d}.png").write_bytes(png(rng.integers(0, 4, (SIZE, SIZE), dtype=np.uint8)))
    disk = tmp_path / "small-disk"
    out = disk / "generated"
    generate = (f"{sys.executable} -m dagan generate --model {checkpoint} --labels {labels} --out {out} "
                "--edges-from-labels")
    # leave ~24 KB free: room for a few images, not for all 12 (about 3 KB each) and their label views
    script = (f"avail=$(df --output=avail -B1 {disk} | tail -1); head -c $((avail - 24576)) /dev/zero > "
              f"{disk / 'filler'}; {generate}; echo \"== first $?\"; ls -A {disk}; rm {disk / 'filler'}; "
              f"{generate} > /dev/null; echo \"== second $?\"; ls {out} | grep -c png; echo '== end'")
    result, _ = run_on_small_disk(disk, "256k", ["sh", "-c", script], tmp_path)
    first, second = result.stdout.split("== first ")[1].split("== end")[0].split("== second ")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert first.split()[0] == "2" and len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(f"error: no space left on the device writing {out} ") and \
        f"nothing was written to {out}" in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert first.split()[1:] == ["filler"]  # no output folder, no staging folder: nothing half-written
    assert second.split() == ["0", "12"]  # the same command, no --overwrite needed
