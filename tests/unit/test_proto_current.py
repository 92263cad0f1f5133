"""The committed gRPC code is exactly what `make proto` generates from the .proto now."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED_DIR = Path("heimdall/api/v1")
GENERATED = ("heimdall_pb2.py", "heimdall_pb2_grpc.py", "heimdall_pb2.pyi")


def make_proto_command() -> list[str]:
    """The Makefile's `proto` recipe, as an argument list."""
    recipe = re.search(r"^proto:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert recipe, "Makefile has no `proto` target"
    return recipe.group(1).split()


def test_make_proto_compiles_from_the_repo_root_into_the_tree():
    assert make_proto_command() == [
        "$(PY)", "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--grpc_python_out=.", "--pyi_out=.",
        str(GENERATED_DIR / "heimdall.proto"),
    ]


def test_committed_generated_code_is_current(tmp_path):
    command = [sys.executable if arg == "$(PY)" else arg.replace("_out=.", f"_out={tmp_path}")
               for arg in make_proto_command()]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in GENERATED:
        fresh = (tmp_path / GENERATED_DIR / name).read_bytes()
        committed = (REPO / GENERATED_DIR / name).read_bytes()
        assert fresh == committed, f"{GENERATED_DIR / name} is stale: run `make proto`"
