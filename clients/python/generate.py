"""Generates the Python modules of the flashsale API from ../../proto into ./generated.

The generated code is not committed: it is made from the protos on first use (importing
`flashsale_client` calls `ensure()`) and again whenever a .proto file or the grpcio-tools
version changes, so it can never drift from the contract. Run it by hand with
`python generate.py` (add `--force` to regenerate regardless).

Output: `generated/flashsale/v1/{common,auth,admin,purchase,feeds}_pb2.py` (messages),
`*_pb2_grpc.py` (stubs) and `*_pb2.pyi` (types for editors), importable as
`flashsale.v1.xxx_pb2` once `generated/` is on `sys.path`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
OUT = HERE / "generated"
# Holds the fingerprint of the inputs the current output was made from.
STAMP = OUT / ".fingerprint"


def proto_files() -> list[Path]:
    """Every .proto of the API, in a stable order."""
    files = sorted(PROTO_ROOT.glob("flashsale/**/*.proto"))
    if not files:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT}")
    return files


def fingerprint() -> str:
    """Changes whenever a .proto file or the code generator changes."""
    from importlib.metadata import version

    digest = hashlib.sha256(f"grpcio-tools {version('grpcio-tools')}\n".encode())
    for path in proto_files():
        digest.update(str(path.relative_to(PROTO_ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def is_current() -> bool:
    """True when ./generated was made from the current protos by the installed grpcio-tools."""
    try:
        return STAMP.read_text().strip() == fingerprint()
    except FileNotFoundError:
        return False


def generate() -> Path:
    """Runs `python -m grpc_tools.protoc` into a fresh directory, then swaps it in."""
    stamp = fingerprint()
    tmp = Path(tempfile.mkdtemp(prefix=".generated-", dir=HERE))
    tmp.chmod(0o755)  # mkdtemp makes it private; the output is not secret
    try:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--pyi_out={tmp}",
            *(str(path.relative_to(PROTO_ROOT)) for path in proto_files()),
        ]
        subprocess.run(command, check=True, cwd=PROTO_ROOT)
        (tmp / ".fingerprint").write_text(stamp + "\n")
        # Replace the old output; a concurrent generator may have done the same meanwhile, in
        # which case its output (made from the same inputs) is as good as ours.
        old = None
        if OUT.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-generated-", dir=HERE))
            os.replace(OUT, old / "generated")
        try:
            os.replace(tmp, OUT)
        except OSError:
            if not is_current():
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return OUT


def ensure() -> Path:
    """Generates the code unless it is current, and puts it on `sys.path`."""
    if not is_current():
        generate()
    if str(OUT) not in sys.path:
        sys.path.insert(0, str(OUT))
    return OUT


if __name__ == "__main__":
    if "--force" in sys.argv[1:] or not is_current():
        print(f"generated {generate()}")
    else:
        print(f"{OUT} is current")
