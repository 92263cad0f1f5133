"""Real systemd hosts for the e2e tier: Debian bookworm containers booted by systemd-nspawn.

The image is two cached layers under ``.cache/e2e`` (reused across runs, rebuilt
when one of its inputs changes, stale ones deleted):

- the base: ``debootstrap --variant=minbase`` with systemd, the Makefile's
  ``APT_RUNTIME`` (what a node needs from Debian) and pip, plus our Python
  dependencies, installed by the rootfs's own python3 in a chroot (about a minute);
- the package layer: our wheel, built from the working tree, and the units copied
  to ``/etc/systemd/system``. It is an overlayfs upper directory on the base,
  keyed by a hash of the sources, so a code change costs seconds, not a debootstrap;
- or, instead of the package layer, the wheelhouse layer (``build_image(log,
  package=False)``): a bare node for the Ansible role to install on, with our
  dependencies as wheels in ``WHEELHOUSE`` (the containers have no index to reach,
  like a site's own wheel mirror).

Each container stacks both read-only under an upper directory of its own and
boots real systemd as PID 1, in the network namespace of a ``heimdall.lab`` host
(so the switch, the veths and their cleanup are the integration tier's, and this
machine's own network namespace is never touched). The mount of that overlay
exists only in a private mount namespace created for nspawn: it disappears with
nspawn, even if this process is killed. Commands run inside with
``nsenter -t LEADER -a`` (machinectl and ``systemctl -M`` need a host systemd,
which this machine does not run).

Gotchas handled here (see shared/notes/systemd-containers.md):
- with no host systemd, nspawn's ``--keep-unit`` is required, and the shell that
  starts nspawn moves itself into a cgroup of its own first;
- nspawn treats ``--network-namespace-path`` as "the host's network", so it drops
  CAP_NET_ADMIN and mounts ``/proc/sys`` read-only: ``--capability=CAP_NET_ADMIN``
  and ``SYSTEMD_NSPAWN_API_VFS_WRITABLE=network`` give a node what it has on a real
  machine (heimdall-wg needs both, for wireguard-go's TUN device and ip_forward);
- wireguard-go needs ``/dev/net/tun``: it is bound in;
- bookworm's python3 is 3.11.2, the venv's may be newer: dependency markers
  (``python_full_version < "3.11.3"``) differ, so the chroot's pip resolves,
  from wheels built here plus the index for what only it needs.
"""
from __future__ import annotations

import configparser
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from heimdall.lab.hosts import Host, Lab

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "e2e"
SUITE = "bookworm"
# What a booted Debian node has besides APT_RUNTIME; pip is only for installing our package,
# python3-apt for Ansible's apt module (which would fetch it itself, but the containers are offline).
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3-pip", "python3-apt")
WHEELHOUSE = "/var/cache/heimdall-wheels"  # in the wheelhouse layer: every dependency, for bookworm's python3
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # the host's trust store, proxies' CAs included
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
CONTAINER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                 "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
TOOLS = ("systemd-nspawn", "debootstrap", "chroot", "nsenter", "unshare", "setpriv", "mount", "ip", "systemd-id128")
BOOT_TIMEOUT = 60.0
HALT_TIMEOUT = 15.0


class ContainerError(RuntimeError):
    """Building the image, booting, running a command in or halting a container failed."""


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run containers (empty when nothing)."""
    problems = [f"{tool} not found" for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        problems.append("must run as root")
    if not os.path.exists("/dev/net/tun"):
        problems.append("no /dev/net/tun")
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("the kernel has no overlayfs")
    if not _cgroup_roots():
        problems.append("no cgroup2 or name=systemd cgroup hierarchy mounted")
    return problems


# -- the image ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Image:
    """Read-only layers, top first, for an overlay's ``lowerdir``."""

    layers: tuple[Path, ...]

    @property
    def lowerdir(self) -> str:
        return ":".join(map(str, self.layers))

    def find(self, path: str) -> Path | None:
        """The top-most layer's copy of ``path`` (absolute, inside the image), if any layer has it."""
        for layer in self.layers:
            candidate = layer / path.lstrip("/")
            if candidate.exists() or candidate.is_symlink():
                return candidate
        return None


def build_image(log: Path, package: bool = True) -> Image:
    """The cached image for the current sources; builds what is missing, logging to ``log``.
    package=False: the wheelhouse layer instead of the package layer (nothing of ours installed)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    packages = (*BASE_PACKAGES, *apt_runtime())
    requirements = install_requires()
    base_key = _digest([SUITE, *packages, "--", *requirements])
    base = CACHE / f"base-{base_key}"
    if not base.exists():
        _publish(_build_base(packages, requirements, log), base)
    layer = CACHE / f"layer-{_digest([base_key, _sources_digest()])}"
    wheelhouse = CACHE / f"wheelhouse-{base_key}"
    if package and not layer.exists():
        _publish(_build_layer(base, log), layer)
    if not package and not wheelhouse.exists():
        _publish(_build_wheelhouse(base, requirements, log), wheelhouse)
    for entry in CACHE.iterdir():  # older images, and scratch left by runs that died
        scratch_of = re.fullmatch(r"\w+\.(\d+)\.tmp.*", entry.name)
        if entry not in (base, layer, wheelhouse) and not (scratch_of and _alive(int(scratch_of[1]))):
            shutil.rmtree(entry)
    return Image((layer if package else wheelhouse, base))


def apt_runtime() -> list[str]:
    """The Makefile's APT_RUNTIME: the Debian packages a node needs, so the image checks that list too."""
    found = re.search(r"^APT_RUNTIME\s*:=(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    if not found or not found[1].split():
        raise ContainerError("no APT_RUNTIME := ... line in the Makefile")
    return found[1].split()


def install_requires() -> list[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]


def mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for uri in re.findall(r"^URIs:\s*(\S+)", sources.read_text(), re.MULTILINE):
            if "security" not in uri:
                return uri
    one_line = Path("/etc/apt/sources.list")
    if one_line.exists():
        found = re.search(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", one_line.read_text(), re.MULTILINE)
        if found:
            return found[1]
    return "http://deb.debian.org/debian"


def _build_base(packages: tuple[str, ...], requirements: list[str], log: Path) -> Path:
    root = _scratch("base")
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(root), mirror()],
         log, timeout=900)
    wheels = root / "tmp" / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), *requirements], log)
    cert = []
    if HOST_CA.exists():
        shutil.copy(HOST_CA, root / "tmp" / "host-ca.pem")
        cert = ["--cert", "/tmp/host-ca.pem"]
    _run(_chroot_pip(root, "install", *cert, "--find-links", "/tmp/wheels", *requirements), log)
    # The package enables it; heimdall-store runs the node's own redis-server instead.
    (root / "etc/systemd/system/redis-server.service").symlink_to("/dev/null")
    for junk in ("tmp", "var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / junk).glob("*"):
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
            elif entry.name != "partial":
                shutil.rmtree(entry)
    (root / "etc/machine-id").write_text("")  # each container gets its own
    return root


def _build_layer(base: Path, log: Path) -> Path:
    """Our wheel and the units, as an overlay upper directory over ``base``."""
    scratch = _scratch("layer")
    for d in ("upper", "work", "merged", "wheel"):
        (scratch / d).mkdir()
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(scratch / "wheel"),
          str(REPO)], log)
    (wheel,) = (scratch / "wheel").glob("heimdall-*.whl")
    merged = scratch / "merged"
    units = sorted(p for p in (REPO / "systemd").iterdir() if p.suffix in (".service", ".target"))
    script = "; ".join([
        "set -e",
        shlex.join(["mount", "-t", "overlay", "overlay", "-o", _overlay_options(Image((base,)), scratch), str(merged)]),
        shlex.join(["cp", str(wheel), f"{merged}/tmp/"]),
        shlex.join(_chroot_pip(merged, "install", "--no-index", "--no-deps", f"/tmp/{wheel.name}")),
        shlex.join(["rm", f"{merged}/tmp/{wheel.name}"]),
        shlex.join(["cp", *map(str, units), f"{merged}/etc/systemd/system/"]),
    ])
    _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], log)
    upper = scratch / "upper"
    kept = scratch.with_name(scratch.name + ".upper")
    upper.rename(kept)
    shutil.rmtree(scratch)
    return kept


def _build_wheelhouse(base: Path, requirements: list[str], log: Path) -> Path:
    """Our dependencies as wheels for the rootfs's python3, in WHEELHOUSE: an overlay upper
    directory over ``base``. The rootfs's pip picks them (its markers), from wheels built here
    plus the index for what only it needs, as in the base."""
    scratch = _scratch("wheelhouse")
    for d in ("upper", "work", "merged", "wheels"):
        (scratch / d).mkdir()
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(scratch / "wheels"), *requirements], log)
    merged = scratch / "merged"
    cert = ["--cert", "/tmp/host-ca.pem"] if HOST_CA.exists() else []
    script = "; ".join([
        "set -e",
        shlex.join(["mount", "-t", "overlay", "overlay", "-o", _overlay_options(Image((base,)), scratch), str(merged)]),
        shlex.join(["cp", "-r", str(scratch / "wheels"), f"{merged}/tmp/wheels"]),
        *([shlex.join(["cp", str(HOST_CA), f"{merged}/tmp/host-ca.pem"])] if cert else []),
        shlex.join(_chroot_pip(merged, "wheel", *cert, "--find-links", "/tmp/wheels", "--wheel-dir", WHEELHOUSE,
                               *requirements)),
        shlex.join(["rm", "-rf", f"{merged}/tmp/wheels", f"{merged}/tmp/host-ca.pem"]),
    ])
    _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], log)
    kept = scratch.with_name(scratch.name + ".upper")
    (scratch / "upper").rename(kept)
    shutil.rmtree(scratch)
    return kept


def _chroot_pip(root: Path, command: str, *args: str) -> list[str]:
    """pip of the rootfs's own python3, system-wide (what `pip install` as root does on a node)."""
    env = {"PATH": CONTAINER_ENV["PATH"], "HOME": "/root", "PYTHONDONTWRITEBYTECODE": "1",
           **{k: os.environ[k] for k in PROXY_VARIABLES if k in os.environ}}
    installing = ["--break-system-packages", "--root-user-action=ignore", "--no-warn-script-location"]
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), "chroot", str(root), "python3", "-m", "pip",
            "--no-cache-dir", "--disable-pip-version-check", "--quiet", command,
            *(installing if command == "install" else []), *args]


def _sources_digest() -> str:
    """What the package layer is made of: the package's sources, its metadata and the units."""
    files = [REPO / name for name in ("setup.cfg", "pyproject.toml", "README.md")]
    files += [p for p in (REPO / "heimdall").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += [p for p in (REPO / "systemd").iterdir() if p.is_file()]
    parts = []
    for path in sorted(files):
        parts += [str(path.relative_to(REPO)), hashlib.sha256(path.read_bytes()).hexdigest()]
    return _digest(parts)


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _scratch(kind: str) -> Path:
    path = CACHE / f"{kind}.{os.getpid()}.tmp"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    return path


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _publish(built: Path, target: Path) -> None:
    """Rename into place; a concurrent build that got there first wins and ours goes."""
    try:
        built.rename(target)
    except OSError:
        if not target.exists():
            raise
        shutil.rmtree(built)


def _run(argv: list[str], log: Path, timeout: float = 300) -> None:
    with log.open("a") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ContainerError(f"`{shlex.join(argv)[:200]}` did not finish in {timeout:.0f} s; see {log}") from None
    if result.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise ContainerError(f"`{shlex.join(argv)[:200]}` exited {result.returncode}; end of {log}:\n{tail}")


def _overlay_options(image: Image, scratch: Path) -> str:
    return f"lowerdir={image.lowerdir},upperdir={scratch / 'upper'},workdir={scratch / 'work'}"


# -- containers -----------------------------------------------------------------------------------
def _cgroup_roots() -> list[Path]:
    """The hierarchies a container's systemd uses: cgroup2 and the v1 name=systemd one (hybrid hosts)."""
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")
        mountpoint, (fstype, _, options) = line.split()[4], fields[1].split()[:3]
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
            roots.append(Path(mountpoint))
    return roots


class Container:
    """One booted Debian with real systemd as PID 1. Create it with ``Fleet.boot``."""

    def __init__(self, name: str, host: Host, image: Image, scratch: Path, console: Path) -> None:
        self.name = name  # also its hostname
        self.host = host  # the lab host whose network namespace it boots in
        self.machine = host.netns  # unique per run: nspawn's machine name and our cgroups' name
        self.address = host.underlay_ip
        self.image = image
        self.scratch = scratch
        self.console = console
        self.cgroups = [root / self.machine for root in _cgroup_roots()]
        self._nspawn: subprocess.Popen | None = None
        self.leader: int | None = None

    def __repr__(self) -> str:
        return f"Container({self.name!r}, {self.address}, leader={self.leader})"

    # -- running things inside --------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` in the container as root (its namespaces, root directory and a clean
        environment) and wait; text output captured. check=True raises ContainerError, and so
        does a timeout, after killing the command."""
        with subprocess.Popen(self.command(*argv), stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CONTAINER_ENV) as proc:
            try:
                stdout, stderr = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                for child in _children(proc.pid):  # nsenter forks to enter the PID namespace: the command
                    os.kill(child, signal.SIGKILL)
                proc.kill()
                proc.communicate()
                raise ContainerError(f"{self.name}: `{shlex.join(argv)}` did not finish in {timeout:.0f} s") from None
        result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise ContainerError(f"{self.name}: `{shlex.join(argv)}` exited {result.returncode}: "
                                 f"{(result.stderr or result.stdout).strip() or 'no output'}")
        return result

    def command(self, *argv: str) -> list[str]:
        if self.leader is None:
            raise ContainerError(f"{self.name} is not running")
        return ["nsenter", "-t", str(self.leader), "-a", "--", *argv]

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit`` as a dict."""
        out = self.systemctl("show", *(f"--property={p}" for p in properties), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "--quiet", *args).stdout

    # -- lifecycle, driven by Fleet ---------------------------------------------------------
    def boot(self, files: dict[str, tuple[str | None, int]]) -> None:
        """Write the per-host ``files`` ({path: (text, mode)}; text None: a directory) into its
        upper dir, boot and wait until systemd reports the system running."""
        upper, work = self.scratch / "upper", self.scratch / "work"
        merged = self.scratch / "merged"
        for d in (upper, work, merged):
            d.mkdir(parents=True)
        identity = {"/etc/hostname": (f"{self.name}\n", 0o644),
                    "/etc/hosts": (f"127.0.0.1 localhost\n127.0.1.1 {self.name}\n", 0o644),
                    "/etc/machine-id": (subprocess.run(["systemd-id128", "new"], capture_output=True, text=True,
                                                       check=True).stdout, 0o444)}
        for path, (text, mode) in sorted({**identity, **files}.items()):  # a directory before its files
            self._write(upper, path, text, mode)
        for cgroup in self.cgroups:
            cgroup.mkdir()
        nspawn = ["systemd-nspawn", "--quiet", f"--directory={merged}", "--boot", "--register=no", "--keep-unit",
                  "--console=pipe", f"--machine={self.machine}", f"--network-namespace-path=/run/netns/{self.machine}",
                  "--bind=/dev/net/tun", "--capability=CAP_NET_ADMIN"]
        # One shell: join our cgroups, mount the overlay and a private /run/systemd/nspawn (its
        # locks and propagation directories) in this private mount namespace, become nspawn.
        script = "; ".join([
            "set -e",
            *(f"echo $$ > {shlex.quote(str(cgroup / 'cgroup.procs'))}" for cgroup in self.cgroups),
            shlex.join(["mount", "-t", "overlay", "overlay", "-o", _overlay_options(self.image, self.scratch),
                        str(merged)]),
            "mkdir -p /run/systemd/nspawn",
            "mount -t tmpfs -o mode=0755 nspawn /run/systemd/nspawn",
            f"exec {shlex.join(nspawn)}",
        ])
        with self.console.open("ab") as out:
            # --pdeathsig: if this test process dies, nspawn gets SIGTERM and halts the container.
            self._nspawn = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM", "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"})
        self.leader = self._wait_for_leader()
        self._wait_until_running()

    def _write(self, upper: Path, path: str, text: str | None, mode: int) -> None:
        """Create the file (or directory, text None) ``path`` in the upper dir. Parent directories
        it creates copy the image's mode and owner (an upper directory's attributes replace the
        lower one's), or get 0755."""
        target = upper / path.lstrip("/")
        for parent in reversed(target.relative_to(upper).parents[:-1]):
            here = upper / parent
            if not here.exists():
                below = self.image.find(str(parent))
                here.mkdir()
                st = below.stat() if below is not None else None
                if st is not None:
                    os.chown(here, st.st_uid, st.st_gid)
                here.chmod(st.st_mode & 0o7777 if st is not None else 0o755)
        if text is None:
            target.mkdir(exist_ok=True)
        else:
            target.write_text(text)
        target.chmod(mode)

    def _wait_for_leader(self) -> int:
        """The container's PID 1 as seen from here: the child of nspawn that runs systemd."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise ContainerError(f"{self.name}: nspawn exited {self._nspawn.returncode}: {self._console_tail()}")
            for child in _children(self._nspawn.pid):
                if _comm(child) == "systemd":
                    return child
            time.sleep(0.05)
        raise ContainerError(f"{self.name}: no systemd under nspawn after {BOOT_TIMEOUT:.0f} s: {self._console_tail()}")

    def _wait_until_running(self) -> None:
        """``is-system-running --wait`` once systemd answers; a degraded boot is an error."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        state = ""
        while time.monotonic() < deadline:
            result = self.run("systemctl", "is-system-running", "--wait", check=False,
                              timeout=max(1.0, deadline - time.monotonic()))
            state = result.stdout.strip()
            if state == "running":
                return
            if state in ("degraded", "maintenance", "stopping"):
                failed = self.systemctl("--failed", check=False).stdout
                raise ContainerError(f"{self.name} booted {state}:\n{failed}")
            time.sleep(0.05)  # systemd's bus not up yet
        raise ContainerError(f"{self.name}: not running after {BOOT_TIMEOUT:.0f} s (last state {state!r})")

    def _console_tail(self) -> str:
        return self.console.read_text(errors="replace")[-2000:] if self.console.exists() else "no console output"

    def halt(self) -> None:
        """Halt (SIGTERM to nspawn: systemd shuts down), or kill the container's PID 1 after
        HALT_TIMEOUT; then remove its cgroups and scratch dirs. Safe to call twice."""
        if self._nspawn is not None and self._nspawn.poll() is None:
            self._nspawn.send_signal(signal.SIGTERM)
            try:
                self._nspawn.wait(HALT_TIMEOUT)
            except subprocess.TimeoutExpired:
                if self.leader is not None and self.leader in _children(self._nspawn.pid):
                    os.kill(self.leader, signal.SIGKILL)  # ends the PID namespace: everything in it dies
                self._nspawn.kill()
                self._nspawn.wait()
        self.leader = None
        for cgroup in self.cgroups:
            _remove_cgroup(cgroup)
        shutil.rmtree(self.scratch, ignore_errors=True)


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _remove_cgroup(cgroup: Path) -> None:
    """rmdir the cgroup and what the container's systemd made below it, deepest first."""
    if not cgroup.exists():
        return
    for dirpath, _, _ in sorted(os.walk(cgroup), key=lambda entry: -entry[0].count("/")):
        os.rmdir(dirpath)


class Fleet:
    """Containers on one switch; ``close()`` halts them and removes everything they used.

    ``with Fleet(image, log_dir) as fleet: node = fleet.boot("n1", files)``. Consoles
    are logged to ``log_dir/<name>.console``.
    """

    def __init__(self, image: Image, log_dir: Path) -> None:
        self.image = image
        self.log_dir = log_dir
        self.containers: dict[str, Container] = {}
        self.lab = Lab()
        self.scratch = Path(tempfile.mkdtemp(prefix=f"heimdall-e2e-{self.lab.prefix}-"))

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def boot(self, name: str, files: dict[str, tuple[str | None, int]]) -> Container:
        host = self.lab.add_host(name)
        container = Container(name, host, self.image, self.scratch / name, self.log_dir / f"{name}.console")
        self.containers[name] = container
        container.boot(files)
        return container

    def close(self) -> None:
        """Halt every container, then delete the namespaces (the lab kills anything left in
        them) and the scratch space. Raises ContainerError at the end if something stayed."""
        problems = []
        for container in self.containers.values():
            try:
                container.halt()
            except Exception as exc:  # keep going: the rest must go regardless
                problems.append(f"{container.name}: {exc}")
        try:
            self.lab.close()
        except Exception as exc:
            problems.append(str(exc))
        shutil.rmtree(self.scratch, ignore_errors=True)
        if problems:
            raise ContainerError("cleanup incomplete: " + "; ".join(problems))
