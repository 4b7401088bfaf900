"""Build the raw store's C framer (ingestion/_rawframe.c) in place, next to its source.

``make venv`` (and so ``make test`` / ``make run``) runs this after installing
the requirements; the Dockerfile runs it in the image. It needs a C compiler,
Python's headers and OpenSSL's (Debian: gcc, libssl-dev). Without the built
module ``ingestion.rawstore`` still works, on its pure-Python framer at under
a third of the append rate, and says so in its log and in ``rawstore.FRAMER``.

    .venv/bin/python scripts/build_ext.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    try:
        from setuptools import Extension
        from setuptools.dist import Distribution
    except ImportError:
        print("build_ext: setuptools is missing; install it into the venv (pip install setuptools)", file=sys.stderr)
        return 1
    os.chdir(ROOT)
    ext = Extension(
        "ingestion._rawframe",
        sources=["ingestion/_rawframe.c"],
        libraries=["crypto"],
        extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
    )
    with tempfile.TemporaryDirectory(prefix="fp-build-") as tmp:
        dist = Distribution({"name": "first-principle-rawframe", "ext_modules": [ext]})
        dist.verbose = 0  # type: ignore[attr-defined]  # Compiler warnings and errors still print.
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True  # type: ignore[attr-defined]
        cmd.force = True  # type: ignore[attr-defined]  # A copied-in stale .so must not be kept.
        cmd.build_temp = tmp  # type: ignore[attr-defined]
        cmd.build_lib = tmp  # type: ignore[attr-defined]
        try:
            dist.run_command("build_ext")
        except Exception as exc:  # setuptools raises CompileError, LinkError, DistutilsError...
            print(f"build_ext: building ingestion/_rawframe.c failed: {exc}\n"
                  "  it needs gcc, Python's headers and OpenSSL's headers (Debian: apt-get install gcc libssl-dev)",
                  file=sys.stderr)  # fmt: skip
            return 1
    # Import it in a fresh interpreter, so a module that builds but cannot load fails here.
    check = "import ingestion._rawframe as m; print('built ingestion._rawframe', m.SHA256_IMPL, m.OPENSSL_VERSION)"
    return subprocess.run([sys.executable, "-c", check], check=False).returncode  # noqa: S603 - our own interpreter and code


if __name__ == "__main__":
    sys.exit(main())
