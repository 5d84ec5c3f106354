"""Helper of test_reliability.py: kill ``save`` with SIGKILL at many points.

Run as ``python kill_during_save.py FOLDER MODE``. FOLDER holds ``old.ivfsq``
and ``new.ivfsq`` (two different indexes). For each kill point, this process
(single-threaded, so forking is safe) copies the old file to ``target.ivfsq``
and forks; the child loads the new index and saves it over the target, and
is killed by SIGKILL at the chosen point; the parent then checks that the
target loads and holds exactly the old or the new file's bytes, and removes
the temporary file the killed save left. MODE is

- ``points``: the child kills itself after a given number of bytes written
  (offsets spread over the whole file), and at the fsync of the file, the
  rename, and the fsync of the folder;
- ``timed``: the child saves in a loop and the parent kills it after a
  random delay (no instrumentation at all).

Prints one JSON object: the kill points tried and what the target held.
"""

import glob
import json
import os
import random
import shutil
import signal
import sys
import time


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def _instrument(point):
    """Make this (child) process die at ``point``: an int (bytes written) or
    the name of a step."""
    from ivfsq.io import format as _format
    real_fdopen, real_fsync, real_replace = os.fdopen, os.fsync, os.replace

    if isinstance(point, int):
        class KillingFile:
            def __init__(self, file):
                self._file = file
                self._written = 0

            def write(self, data):
                data = bytes(data)
                room = point - self._written
                if room < len(data):
                    self._file.write(data[:room])
                    self._file.flush()
                    _kill_self()
                self._written += len(data)
                return self._file.write(data)

            def __getattr__(self, name):
                return getattr(self._file, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._file.__exit__(*exc)

        _format.os.fdopen = lambda fd, mode: KillingFile(real_fdopen(fd, mode))
        return
    calls = {"fsync": 0}

    def fsync(fd):
        calls["fsync"] += 1
        # The first fsync is the file's, the second the folder's.
        if (point == "fsync_file" and calls["fsync"] == 1) or (
            point == "fsync_folder" and calls["fsync"] == 2
        ):
            _kill_self()
        return real_fsync(fd)

    def replace(source, target):
        if point == "before_rename":
            _kill_self()
        real_replace(source, target)
        if point == "after_rename":
            _kill_self()

    _format.os.fsync = fsync
    _format.os.replace = replace


def _child_save(folder, point):
    from ivfsq.common import Resources
    from ivfsq.neighbors import ivf_sq

    index = ivf_sq.load(os.path.join(folder, "new.ivfsq"))
    target = os.path.join(folder, "target.ivfsq")
    one = Resources(n_threads=1)
    if point == "loop":
        while True:
            ivf_sq.save(target, index, resources=one)
    _instrument(point)
    ivf_sq.save(target, index, resources=one)
    os._exit(0)  # the kill point was not reached


def _check(folder, old_bytes, new_bytes):
    """What the target holds after a kill: "old" or "new" (and it loads), or
    a description of the damage."""
    from ivfsq.neighbors import ivf_sq

    target = os.path.join(folder, "target.ivfsq")
    with open(target, "rb") as file:
        held = file.read()
    state = "old" if held == old_bytes else "new" if held == new_bytes else "other"
    if state != "other":
        ivf_sq.load(target)  # raises if it does not load
    for leftover in glob.glob(os.path.join(folder, ".target.ivfsq.*.tmp")):
        os.unlink(leftover)
    return state


def main():
    folder, mode = sys.argv[1], sys.argv[2]
    with open(os.path.join(folder, "old.ivfsq"), "rb") as file:
        old_bytes = file.read()
    with open(os.path.join(folder, "new.ivfsq"), "rb") as file:
        new_bytes = file.read()
    size = len(new_bytes)
    if mode == "points":
        rng = random.Random(0)
        points = [0, 1, 7, 8, 63, 64, 65, size - 1, size]
        points += sorted(rng.randrange(size) for _ in range(40))
        points += ["fsync_file", "before_rename", "after_rename", "fsync_folder"]
    else:
        points = ["loop"] * 25
    rng = random.Random(1)
    results = []
    for point in points:
        shutil.copyfile(os.path.join(folder, "old.ivfsq"), os.path.join(folder, "target.ivfsq"))
        pid = os.fork()
        if pid == 0:
            try:
                _child_save(folder, point)
            finally:
                os._exit(3)  # only reached on an unexpected error
        if point == "loop":
            time.sleep(rng.uniform(0.05, 0.6))
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        results.append({"point": point, "killed": killed, "held": _check(folder, old_bytes,
                                                                           new_bytes)})
    print(json.dumps({"file_bytes": size, "results": results}))


if __name__ == "__main__":
    main()
