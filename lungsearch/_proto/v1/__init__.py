"""Generated gRPC/protobuf code for lungsearch.v1 (by tools/gen_protos.py; do not edit)."""
