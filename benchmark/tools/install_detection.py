"""Install the coco suite's detection stack (requirements-detection.txt) into this Python environment.

    python -m benchmark.tools.install_detection [--wheel-cache DIR] [--jobs N]

mmcv 2.x has no wheels for this torch on the package index: it is built from source once
(``MMCV_WITH_OPS=1``, the CPU ops, ``-O3``: without it the RoIAlign/NMS ops are 2.4x slower),
against the torch already installed here, from its unpacked sdist with ninja (parallel compile
jobs) and its helper header precompiled (parsing torch's headers was most of each source's
compile), into a wheel cache (``$KD_WHEEL_CACHE``, default ``~/.cache/kd-bench-wheels``, one
folder per torch version and Python ABI); every later install reuses that wheel. Then the pins
of ``requirements-detection.txt`` are installed from the index with the cache as an extra source.
Idempotent: nothing happens when ``import mmcv.ops, mmdet`` already works with the pinned versions.
One line per step; exit 0 when the stack imports.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements-detection.txt"
BUILD_FLAGS = "-DNDEBUG -fwrapv -O3 -g0"
# What torch's BuildExtension appends to every mmcv source's compile line (its ``post_cflags``).
POST_FLAGS = ("-std=c++17", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_ext")
# 63 of mmcv's 77 CPU sources start with this header, which pulls in torch's: parsing it was ~9 of the
# ~11 s one such source took here (-O0 to -O3 alike). Precompiled once (GCC finds ``<name>.gch`` in the
# first include directory), the build took 5.5 instead of 14 CPU minutes; GCC ignores (and -Winvalid-pch
# reports) a precompiled header whose flags differ, so the result never depends on it.
HELPER_HEADER = "mmcv/ops/csrc/common/pytorch_cpp_helper.hpp"

PROBE = """
import mmcv, mmdet, torch
import mmcv.ops
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]]); scores = torch.tensor([0.9, 0.8])
mmcv.ops.nms(boxes, scores, 0.5)
print(mmcv.__version__, mmdet.__version__)
"""


def say(message: str) -> None:
    print(f"install_detection: {message}", flush=True)


def pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s#;]+)", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def probe() -> tuple[bool, str]:
    """Whether mmcv (with ops) and mmdet import here, and their versions (or the error's last line)."""
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    if result.returncode == 0:
        return True, result.stdout.strip()
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return False, lines[-1] if lines else f"exit code {result.returncode}"


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-8000:])
        raise SystemExit(f"install_detection: failed: {' '.join(command[2:])}")


def precompile_helper_header(source: Path, pch_dir: Path) -> bool:
    """``pch_dir/pytorch_cpp_helper.hpp.gch``, compiled with the flags BuildExtension gives the sources."""
    from torch.utils.cpp_extension import include_paths

    includes = [source / Path(HELPER_HEADER).parent, *include_paths(), Path(sys.prefix) / "include"]
    includes.append(sysconfig.get_paths()["include"])
    pch_dir.mkdir(parents=True, exist_ok=True)
    command = [os.environ.get("CXX", "c++"), *BUILD_FLAGS.split(), "-fPIC", *(f"-I{path}" for path in includes)]
    command += [*POST_FLAGS, "-x", "c++-header", str(source / HELPER_HEADER)]
    command += ["-o", str(pch_dir / (Path(HELPER_HEADER).name + ".gch"))]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        say(f"no precompiled header (the build goes on without it, slower): {result.stderr.strip()[-300:]}")
    return result.returncode == 0


def build_mmcv_wheel(version: str, cache: Path, jobs: int) -> None:
    """mmcv's sdist, unpacked, with its helper header precompiled, built into a wheel in ``cache``."""
    with tempfile.TemporaryDirectory(prefix="mmcv-build-") as scratch:
        scratch = Path(scratch)
        pip(
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-build-isolation",
            "-d",
            str(scratch),
            f"mmcv=={version}",
        )
        with tarfile.open(scratch / f"mmcv-{version}.tar.gz") as sdist:
            sdist.extractall(scratch, filter="data")
        source = scratch / f"mmcv-{version}"
        step = time.perf_counter()
        flags = BUILD_FLAGS
        if precompile_helper_header(source, scratch / "pch"):
            say(f"mmcv {version}: its helper header precompiled in {time.perf_counter() - step:.0f}s")
            flags = f"-I{scratch / 'pch'} -Winvalid-pch {BUILD_FLAGS}"  # searched first: the .gch is found
        env = {
            **os.environ,
            "MMCV_WITH_OPS": "1",
            "FORCE_CUDA": os.environ.get("FORCE_CUDA", "0"),
            "MAX_JOBS": str(jobs),  # ninja's parallel compile jobs
            "CFLAGS": flags,
        }
        # --no-cache-dir: never a wheel from pip's own cache, built with other flags or against another torch.
        pip(
            "wheel",
            "--quiet",
            "--no-cache-dir",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(cache),
            str(source),
            env=env,
        )


def torch_tag() -> str:
    import torch

    return f"torch-{torch.__version__}-cp{sys.version_info.major}{sys.version_info.minor}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_cache = os.environ.get("KD_WHEEL_CACHE") or str(Path.home() / ".cache" / "kd-bench-wheels")
    parser.add_argument(
        "--wheel-cache", default=default_cache, help=f"where the built mmcv wheel is kept (default {default_cache})"
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs for mmcv (default: all CPUs)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    wanted = pins()
    mmcv_version, mmdet_version = wanted["mmcv"], wanted["mmdet"]

    ok, detail = probe()
    if ok and detail.split() == [mmcv_version, mmdet_version]:
        say(f"mmcv {mmcv_version} (ops) and mmdet {mmdet_version} already import here: nothing to do")
        return 0
    say(f"the detection stack does not import yet ({detail})")

    step = time.perf_counter()
    pip("install", "--quiet", f"setuptools=={wanted['setuptools']}", f"ninja=={wanted['ninja']}")
    say(
        f"setuptools {wanted['setuptools']} (pkg_resources for mmcv's build and mmengine) and ninja {wanted['ninja']}"
        f" (parallel compiles) installed in {time.perf_counter() - step:.0f}s"
    )

    cache = Path(args.wheel_cache) / torch_tag()
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"mmcv-{mmcv_version}-*.whl"))
    if wheels:
        say(f"mmcv {mmcv_version}: reusing the cached wheel {wheels[-1]}")
    else:
        say(
            f"mmcv {mmcv_version}: building a wheel from source with the CPU ops ({args.jobs} jobs, several minutes) into {cache}"
        )
        step = time.perf_counter()
        build_mmcv_wheel(mmcv_version, cache, args.jobs)
        wheels = sorted(cache.glob(f"mmcv-{mmcv_version}-*.whl"))
        if not wheels:
            raise SystemExit(f"install_detection: failed: no mmcv wheel appeared in {cache}")
        say(f"mmcv {mmcv_version}: wheel built in {time.perf_counter() - step:.0f}s: {wheels[-1].name}")

    step = time.perf_counter()
    pip("install", "--quiet", "--find-links", str(cache), "-r", str(REQUIREMENTS))
    say(f"{REQUIREMENTS.name} installed (mmcv from the cached wheel) in {time.perf_counter() - step:.0f}s")

    ok, detail = probe()
    if not ok:
        raise SystemExit(f"install_detection: failed: the stack still does not import ({detail})")
    say(f"mmcv {mmcv_version} (ops) and mmdet {mmdet_version} import; done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
