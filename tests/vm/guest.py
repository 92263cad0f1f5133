"""Run one Python script as root inside a qemu guest booted with Debian's kernel.

The host kernel here has no WireGuard and cannot load modules, so kernel
WireGuard can only be tested in a guest. Software emulation (TCG) is slow, so
the guest is as small as possible: a cached initramfs holding static busybox,
an /init script and the four modules needed to mount 9p shares. Everything
else comes from the host, read-only over 9p: /usr (Debian's python3, iproute2,
ping, kmod and /usr/lib/modules, so the kernel loads wireguard, veth, ... on
demand), the repository, and the site-packages holding pyroute2 and
cryptography. The script's output and its exit code come back on the serial
console.
"""
from __future__ import annotations

import hashlib
import lzma
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "vm"
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")
GUEST_PYTHON = "/usr/bin/python3"  # the host's, seen by the guest through the /usr share
# Loaded from the initramfs because /usr, and with it modprobe, is reachable only after.
INITRAMFS_MODULES = ("9pnet_virtio", "9p")
EXIT_MARKER = "heimdall-guest-exit="

# 9p without cache=loose and a large msize makes each Python start 3x slower.
INIT = """#!/busybox/busybox sh
# PID 1 of the test guest: mount the host shares, run one script, report its exit code.
echo  # end the firmware's last console line
# The root mirrors Debian's merged /usr (/bin -> usr/bin, ...) so the host's absolute
# symlinks (/usr/sbin/modprobe -> /bin/kmod) work; busybox stays in /busybox.
export PATH=/usr/sbin:/usr/bin:/busybox
fail() { echo "guest setup failed: $*"; echo "heimdall-guest-exit=125"; poweroff -f; }
/busybox/busybox --install -s /busybox
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev || fail "mount /proc /sys /dev"
for m in /modules/*.ko; do insmod "$m" || fail "insmod $m"; done
opts=trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000
for share in usr repo site; do mount -t 9p -o $opts $share /$share || fail "mount 9p share $share"; done
for d in bin sbin lib lib64; do ln -s usr/$d /$d || fail "link /$d"; done
mount -t tmpfs tmp /tmp && mount -t tmpfs run /run && ln -s ../run /var/run || fail "mount /tmp /run"
ip link set lo up
export HOME=/tmp PYTHONPATH=/repo:/site PYTHONDONTWRITEBYTECODE=1
cd /repo && python3 -u "$HEIMDALL_SCRIPT"
echo "heimdall-guest-exit=$?"
poweroff -f
"""


class GuestError(Exception):
    """The guest could not be built, booted, or did not report a result."""


@dataclass(frozen=True)
class Kernel:
    version: str
    image: Path

    @property
    def modules(self) -> Path:
        return Path("/lib/modules") / self.version


@dataclass(frozen=True)
class GuestResult:
    exit_code: int
    output: str  # the console, kernel messages included
    seconds: float


def find_kernel() -> Kernel:
    """The newest kernel in /boot whose modules include WireGuard."""
    candidates = []
    for image in Path("/boot").glob("vmlinuz-*"):
        kernel = Kernel(image.name.removeprefix("vmlinuz-"), image)
        if list((kernel.modules / "kernel/drivers/net/wireguard").glob("wireguard.ko*")):
            candidates.append(kernel)
    if not candidates:
        raise GuestError(
            "no /boot/vmlinuz-* with a WireGuard module under /lib/modules; "
            "install a Debian kernel (apt-get install linux-image-amd64)"
        )
    return max(candidates, key=lambda k: k.image.stat().st_mtime)


def _module_files(kernel: Kernel) -> list[Path]:
    """The initramfs modules and their dependencies, in load order (kmod's answer)."""
    out = subprocess.run(
        ["modprobe", "-S", kernel.version, "--show-depends", "-a", *INITRAMFS_MODULES],
        check=True, capture_output=True, text=True,
    ).stdout
    files: list[Path] = []
    for line in out.splitlines():
        if line.startswith("insmod "):
            path = Path(line.split()[1])
            if path not in files:
                files.append(path)
    return files


def build_initramfs(kernel: Kernel) -> Path:
    """Build (once per kernel and /init text) the guest's initramfs; return its path."""
    key = hashlib.sha256(f"{kernel.version}\n{INIT}\n{INITRAMFS_MODULES}".encode()).hexdigest()[:16]
    target = CACHE / f"initramfs-{kernel.version}-{key}.cpio"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp) / "root"
        try:
            _fill_root(root, kernel)
            files = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
            archive = Path(tmp) / "initramfs.cpio"
            with archive.open("wb") as out:
                subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, stdout=out,
                               stderr=subprocess.PIPE, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or ""
            raise GuestError(f"cannot build the initramfs (needs busybox-static, kmod, cpio): {exc} {detail}") from exc
        archive.rename(target)  # atomic: a concurrent build just wins or loses
    for stale in CACHE.glob("initramfs-*.cpio"):  # from older kernels or /init texts
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def _fill_root(root: Path, kernel: Kernel) -> None:
    for d in ("busybox", "dev", "proc", "sys", "usr", "repo", "site", "tmp", "run", "var", "modules"):
        (root / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "busybox/busybox")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    for i, path in enumerate(_module_files(kernel)):
        data = path.read_bytes()
        if path.suffix == ".xz":  # busybox's insmod hands the kernel the file as it is
            data = lzma.decompress(data)
        (root / "modules" / f"{i:02d}-{path.name.split('.')[0]}.ko").write_bytes(data)


def check_guest_python(site: Path) -> None:
    """Fail early, on the host, if the guest's python3 cannot import our dependencies from ``site``."""
    probe = subprocess.run(
        [GUEST_PYTHON, "-c", "import pyroute2, cryptography.hazmat.primitives.asymmetric.x25519"],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
    )
    if probe.returncode:
        raise GuestError(
            f"{GUEST_PYTHON} cannot import pyroute2/cryptography from {site} "
            f"(the guest runs the host's {GUEST_PYTHON}; its version must match the venv's):\n{probe.stderr}"
        )


def run(script: str, site: Path, timeout: float = 100.0) -> GuestResult:
    """Boot the guest, run ``script`` (a path relative to the repository) and return its result."""
    if shutil.which(QEMU) is None:
        raise GuestError(f"{QEMU} is missing (apt-get install qemu-system-x86)")
    kernel = find_kernel()
    initramfs = build_initramfs(kernel)
    check_guest_python(site)
    shares = {"usr": Path("/usr"), "repo": REPO, "site": site}
    cmd = [
        QEMU, "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512",
        "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
        "-kernel", str(kernel.image), "-initrd", str(initramfs),
        "-append", f"console=ttyS0 panic=-1 loglevel=3 HEIMDALL_SCRIPT={script}",
    ]
    for tag, path in shares.items():
        cmd += ["-virtfs", f"local,path={path},mount_tag={tag},security_model=none,readonly=on"]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # run() has killed qemu
        output = (exc.output or b"").decode(errors="replace")
        raise GuestError(f"guest did not finish within {timeout:.0f} s; console:\n{output}") from None
    seconds = time.monotonic() - started
    output = proc.stdout.decode(errors="replace").replace("\r\n", "\n")
    found = re.search(rf"^{EXIT_MARKER}(\d+)$", output, re.MULTILINE)
    if found is None:
        raise GuestError(f"guest reported no exit code (qemu exit {proc.returncode}); console:\n{output}")
    return GuestResult(int(found.group(1)), output, seconds)
