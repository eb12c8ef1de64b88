"""Generate Python, .pyi and gRPC stubs from protos/ into protos/ (package ``cvh``).

Also writes ``cvh/descriptor_set.binpb``: every file with its imports and its
source comments (protoc --include_source_info), which server reflection serves
so that tools such as grpcurl show the contracts' documentation.

Run with ``make protos``. ``--check`` regenerates into a temporary folder and
exits non-zero when the committed stubs or descriptor set differ, so stale
ones fail CI.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
DESCRIPTOR_SET = Path("cvh") / "descriptor_set.binpb"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    include = str(resources.files("grpc_tools") / "_proto")
    for proto in proto_files():
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto.relative_to(PROTO_ROOT)),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    (out_dir / DESCRIPTOR_SET).parent.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--descriptor_set_out={out_dir / DESCRIPTOR_SET}",
            "--include_imports", "--include_source_info",
            *(str(p.relative_to(PROTO_ROOT)) for p in proto_files())]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed writing the descriptor set")
    # Every folder on the way to a stub is a regular package.
    for folder in {p.parent for p in out_dir.rglob("*_pb2.py")}:
        while folder != out_dir:
            (folder / "__init__.py").touch()
            folder = folder.parent


def generated_files(root: Path) -> set[Path]:
    return {
        p.relative_to(root)
        for p in root.rglob("*")
        if p.name.endswith(GENERATED_SUFFIXES) or p.name == "__init__.py" or p.relative_to(root) == DESCRIPTOR_SET
    }


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = generated_files(fresh), generated_files(PROTO_ROOT)
        stale = sorted(str(p) for p in want | have
                       if p not in want or p not in have
                       or not filecmp.cmp(fresh / p, PROTO_ROOT / p, shallow=False))
    if stale:
        print("stale generated stubs or descriptor set (run `make protos`):", *stale, sep="\n  ")
        return 1
    print("generated stubs are up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when the committed stubs are stale")
    if parser.parse_args().check:
        return check()
    for stale in generated_files(PROTO_ROOT):
        (PROTO_ROOT / stale).unlink()
    generate(PROTO_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
