"""protoc-gen-grpc_python for buf: grpcio-tools builds its gRPC generator
into its own protoc rather than shipping it as a plugin, so this plugin
hands buf's request to that protoc (as a descriptor set) and returns what
it writes. Run by buf.gen.yaml with the venv's Python."""

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc

request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
response = plugin_pb2.CodeGeneratorResponse(supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL)
with tempfile.TemporaryDirectory() as tmp:
    descriptors = Path(tmp) / "descriptors.pb"
    descriptors.write_bytes(descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString())
    out = Path(tmp) / "out"
    out.mkdir()
    args = ["protoc", f"--descriptor_set_in={descriptors}", f"--grpc_python_out={out}", *request.file_to_generate]
    if protoc.main(args) != 0:
        response.error = "grpc_tools.protoc failed on " + " ".join(request.file_to_generate)
    for path in sorted(out.rglob("*.py")):
        response.file.add(name=str(path.relative_to(out)), content=path.read_text())
sys.stdout.buffer.write(response.SerializeToString())
