#!/usr/bin/env python3
"""Builds Weir's container images from what this machine has, without any image registry.

    deploy/image/build.py weir [--binary PATH] [--tag weir:latest]
    deploy/image/build.py s3-test [--tag weir-s3-test:latest] [--if-stale]

`weir`: the `weir` binary (`weir jobmanager`, `weir taskmanager`, the CLI), without its debug
info, on an empty (`scratch`) base with only what it needs at run time: the shared libraries `ldd` lists for it (glibc,
libstdc++ for RocksDB), CA certificates for S3 over HTTPS, a `/tmp` and a `/data` folder, and
`/etc/weir/config.yaml` (empty: compose files and Kubernetes mount their own there). Default
binary: the release build in `${CARGO_TARGET_DIR:-target}/release/weir`.

`s3-test`: an S3-compatible server for tests (moto's server, the one the test suite already uses
on the host) on `scratch`: this machine's Python interpreter, its standard library, the
libraries they link, and moto installed from PyPI into `/opt/moto`. It listens on port 9000.
Compose tests swap it in for MinIO, which cannot be pulled here.

`--if-stale` skips the build when an image of that tag was built by this very script (its
`org.weir.builder` label holds the script's SHA-256): tests use it to build the S3 image once.

Both images are a root file system assembled in a temporary folder and `docker build` of a
two-line Dockerfile (`FROM scratch`, `COPY`), so they build offline on any Linux machine with
a Docker engine.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def fail(msg):
    sys.exit(f"image: {msg}")


def libraries(path):
    """The shared libraries `path` loads, as absolute paths (the loader included)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    if out.returncode != 0:
        return []  # not a dynamic executable or library
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (")[0].strip()
            if target == "not found":
                fail(f"{path} needs a library this machine lacks: {line}")
            if target.startswith("/"):
                libs.append(target)
        elif line.startswith("/"):
            libs.append(line.split(" (")[0].strip())
    return libs


def copy_into(rootfs, path, dest=None):
    """Copies a file to the same absolute path (or `dest`) inside `rootfs`, as a real file,
    plus the symlink chain's name when `path` is a link, so the loader finds it by either."""
    dest = dest or path
    target = os.path.join(rootfs, dest.lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.exists(target):
        shutil.copy2(os.path.realpath(path), target)
    real = os.path.realpath(path)
    if real != path and dest == path:
        real_target = os.path.join(rootfs, real.lstrip("/"))
        if not os.path.exists(real_target):
            os.makedirs(os.path.dirname(real_target), exist_ok=True)
            shutil.copy2(real, real_target)


def add_libraries(rootfs, binaries):
    seen = set()
    for b in binaries:
        for lib in libraries(b):
            if lib not in seen:
                seen.add(lib)
                copy_into(rootfs, lib)


def base_files(rootfs):
    for d in ("tmp", "data"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    etc = os.path.join(rootfs, "etc")
    os.makedirs(etc, exist_ok=True)
    with open(os.path.join(etc, "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/sbin/nologin\nweir:x:1000:1000:weir:/data:/sbin/nologin\n")
    with open(os.path.join(etc, "group"), "w") as f:
        f.write("root:x:0:\nweir:x:1000:\n")
    with open(os.path.join(etc, "nsswitch.conf"), "w") as f:
        f.write("hosts: files dns\n")
    certs = "/etc/ssl/certs/ca-certificates.crt"
    if os.path.exists(certs):
        copy_into(rootfs, certs)


def builder_id():
    with open(os.path.abspath(__file__), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def up_to_date(tag):
    out = subprocess.run(["docker", "image", "inspect", "-f", '{{index .Config.Labels "org.weir.builder"}}', tag], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == builder_id()


def docker_build(rootfs, tag, dockerfile):
    dockerfile += f"LABEL org.weir.builder={builder_id()}\n"
    with open(os.path.join(rootfs, "..", "Dockerfile"), "w") as f:
        f.write(dockerfile)
    ctx = os.path.dirname(rootfs)
    out = subprocess.run(["docker", "build", "-q", "-t", tag, "-f", os.path.join(ctx, "Dockerfile"), ctx], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"docker build of {tag} failed:\n{out.stderr.strip()[-2000:]}")
    size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True).stdout.strip()
    mib = int(size) / (1 << 20) if size.isdigit() else 0
    print(f"image: built {tag} ({mib:.0f} MiB)")


def build_weir(tag, binary):
    if not os.path.isfile(binary):
        fail(f"no weir binary at {binary}: build it first (cargo build --release --bin weir)")
    with tempfile.TemporaryDirectory() as ctx:
        rootfs = os.path.join(ctx, "rootfs")
        os.makedirs(rootfs)
        base_files(rootfs)
        copy_into(rootfs, binary, "/usr/local/bin/weir")
        # Release builds keep debug info for profiling (Cargo.toml): the image does without it.
        if shutil.which("strip"):
            subprocess.run(["strip", "--strip-debug", os.path.join(rootfs, "usr/local/bin/weir")], check=True)
        add_libraries(rootfs, [binary])
        conf = os.path.join(rootfs, "etc", "weir")
        os.makedirs(conf, exist_ok=True)
        with open(os.path.join(conf, "config.yaml"), "w") as f:
            f.write("# Weir's configuration (docs/configuration.md). Mount your own over this file.\n{}\n")
        docker_build(
            rootfs,
            tag,
            "FROM scratch\nCOPY rootfs/ /\nENV WEIR_CONF_DIR=/etc/weir\nWORKDIR /data\nEXPOSE 6123 8081\n"
            'ENTRYPOINT ["/usr/local/bin/weir"]\nCMD ["--help"]\n',
        )


def build_s3_test(tag):
    python = os.path.realpath(sys.executable)
    stdlib = sysconfig.get_paths()["stdlib"]
    platstdlib = sysconfig.get_paths()["platstdlib"]
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
    with tempfile.TemporaryDirectory() as ctx:
        rootfs = os.path.join(ctx, "rootfs")
        os.makedirs(rootfs)
        base_files(rootfs)
        copy_into(rootfs, python)
        binaries = [python]
        for lib_dir in sorted({stdlib, platstdlib}):
            for dirpath, dirnames, filenames in os.walk(lib_dir):
                dirnames[:] = [d for d in dirnames if not (dirpath == lib_dir and d in skip)]
                for name in filenames:
                    src = os.path.join(dirpath, name)
                    copy_into(rootfs, src)
                    if name.endswith(".so"):
                        binaries.append(src)
        site = os.path.join(rootfs, "opt", "moto")
        pip = subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--no-compile", "--target", site, "moto[server]"],
            capture_output=True,
            text=True,
        )
        if pip.returncode != 0:
            fail(f"pip could not install moto[server]:\n{pip.stderr.strip()[-2000:]}")
        for dirpath, _, filenames in os.walk(site):
            binaries += [os.path.join(dirpath, n) for n in filenames if ".so" in n]
        add_libraries(rootfs, binaries)
        # A stable name for the interpreter, wherever this machine keeps it.
        os.makedirs(os.path.join(rootfs, "usr", "local", "bin"), exist_ok=True)
        link = os.path.join(rootfs, "usr", "local", "bin", "python3")
        if not os.path.lexists(link):
            os.symlink(python, link)
        docker_build(
            rootfs,
            tag,
            "FROM scratch\nCOPY rootfs/ /\nENV PYTHONPATH=/opt/moto PYTHONDONTWRITEBYTECODE=1\nEXPOSE 9000\n"
            'ENTRYPOINT ["/usr/local/bin/python3"]\nCMD ["-m", "moto.server", "-H", "0.0.0.0", "-p", "9000"]\n',
        )


def main():
    args = sys.argv[1:]
    if not args or args[0] not in ("weir", "s3-test"):
        sys.exit(__doc__)
    opt = lambda name, default: args[args.index(name) + 1] if name in args else default
    if shutil.which("docker") is None:
        fail("no docker command: install a Docker engine")
    if args[0] == "weir":
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        build_weir(opt("--tag", "weir:latest"), opt("--binary", os.path.join(target, "release", "weir")))
    else:
        tag = opt("--tag", "weir-s3-test:latest")
        if "--if-stale" in args and up_to_date(tag):
            print(f"image: {tag} is up to date")
            return
        build_s3_test(tag)


if __name__ == "__main__":
    main()
