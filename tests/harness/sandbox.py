"""Run a program the way its pod runs it, with no container engine: Debian's bubblewrap (`bwrap`).

A kresize pod runs as uid 65532 with no passwd entry, `HOME=/tmp`, a read-only root filesystem with only
`/tmp` writable (an emptyDir), and only the environment its image and its pod spec give it. `pod_argv()`
wraps a command so that it runs under exactly those rules, on the host's root filesystem (our programs from
the test virtualenv) or on an image's unpacked root filesystem (tests/test_images.py). The network is the
host's, so the program reaches the test S3 server and apiserver on loopback as a pod reaches Services.

A program that writes outside /tmp, looks itself up in /etc/passwd, or reads a variable nobody sets fails
under these rules as it would in its pod.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

POD_UID = 65532

# What the images' Dockerfiles put in every container's environment (ENV lines), with PATH pointing at
# the test virtualenv's scripts where the image has /usr/local/bin.
IMAGE_ENV = {
    "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}


def bwrap() -> str:
    """The bwrap binary; the container-rules tests need it (`.ci/run` installs Debian's bubblewrap)."""
    path = shutil.which("bwrap")
    if path is None:
        raise RuntimeError("bubblewrap (bwrap) is required to run the programs under container rules: "
                           "apt-get install bubblewrap")
    return path


def pod_argv(
    argv: list[str],
    env: Mapping[str, str],
    *,
    rootfs: Path | str = "/",
    read_only: Iterable[Path | str] = (),
    writable: Iterable[Path | str] = (),
    mounts: Mapping[str, Path | str] | None = None,
    workdir: str = "/tmp",
) -> list[str]:
    """`argv` run as uid 65532 (no passwd entry) on a read-only `rootfs`, a fresh /tmp, and only `env`.

    `read_only` and `writable` are host paths made visible at the same path (files the test hands the
    program, like a kubeconfig standing in for the service-account mount, or an output folder); they are
    mounted after /tmp, so paths under the host's /tmp (pytest's tmp_path) show through. `mounts` maps a
    pod's mount path under /var/run or /run (where Kubernetes mounts Secrets and service-account tokens) to a
    host folder, mounted read-only on a fresh, read-only /run.
    """
    args = [
        bwrap(), "--unshare-user", "--uid", str(POD_UID), "--gid", str(POD_UID),
        "--unshare-ipc", "--die-with-parent",
        "--ro-bind", str(rootfs), "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
    ]
    for path in read_only:
        args += ["--ro-bind", str(path), str(path)]
    for path in writable:
        args += ["--bind", str(path), str(path)]
    if mounts:
        args += ["--tmpfs", "/run"]
        for target, source in mounts.items():
            # /var/run is a link to /run; bwrap needs the real path to create the mount point.
            real = "/run/" + target.removeprefix("/var/run/").removeprefix("/run/")
            if not (target.startswith("/var/run/") or target.startswith("/run/")):
                raise ValueError(f"pod mounts go under /var/run or /run here, not {target}")
            args += ["--ro-bind", str(source), real]
        args += ["--remount-ro", "/run"]
    args += ["--chdir", workdir, "--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return [*args, "--", *argv]



def terminate(bwrap_pid: int) -> None:
    """SIGTERM the program inside a pod_argv() sandbox, as the kubelet signals a container's process (bwrap
    itself would die of it and take the program down with it). bwrap then exits with the program's code."""
    children = Path(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGTERM)
