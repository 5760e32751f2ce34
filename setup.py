"""Build of the native backends (``bls_dlrm.comm._native``); the metadata is in pyproject.toml.

The extension is compiled by the ordinary install (``pip install --no-deps
--no-build-isolation -e .``, as ``make venv`` does) with ``torch.utils.cpp_extension``:
torch's headers and ABI flag, and the ``mpi.h``/``libmpi`` of the MPI that mpi4py uses
(the pip ``mpich`` in the venv, or ``$BLS_MPI_PREFIX``, e.g. a conda prefix).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

CSRC = Path("src/bls_dlrm/comm/csrc")


def _fail(line: str) -> None:
    sys.exit(f"bls-dlrm: {line}")


def _mpi_prefix() -> Path:
    candidates = [os.environ.get("BLS_MPI_PREFIX"), os.environ.get("CONDA_PREFIX"), sys.prefix]
    for prefix in filter(None, candidates):
        if (Path(prefix) / "include" / "mpi.h").exists():
            return Path(prefix)
    _fail(
        f"no mpi.h under {[c for c in candidates if c]}: install the pinned mpich "
        "(pip install -r requirements.txt, or conda install -c conda-forge mpich) or set "
        "BLS_MPI_PREFIX to the MPI installation that mpi4py uses"
    )
    raise AssertionError  # unreachable


def _extensions():
    compiler = os.environ.get("CXX") or next(
        (c for c in ("c++", "g++", "clang++") if shutil.which(c)), None
    )
    if compiler is None or shutil.which(compiler.split()[0]) is None:
        _fail(
            "no C++ compiler found for the native backends (set CXX, or install one: "
            "apt-get install g++, or conda install -c conda-forge cxx-compiler)"
        )
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        _fail("building needs the pinned torch installed first (pip install --no-build-isolation)")
    prefix = _mpi_prefix()
    ext = CppExtension(
        "bls_dlrm.comm._native",
        [str(CSRC / "core.cpp"), str(CSRC / "backend.cpp")],
        include_dirs=[str(CSRC.resolve()), str(prefix / "include")],
        library_dirs=[str(prefix / "lib")],
        runtime_library_dirs=[str(prefix / "lib")],
        libraries=["mpi"],
        extra_compile_args=["-O2", "-g0"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
