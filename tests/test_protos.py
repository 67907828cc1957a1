"""The public contract: generated code is current, and every message round-trips."""

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool

from lungsearch._proto.v1 import common_pb2, encoding_pb2, fusion_pb2, gateway_pb2, hashing_pb2, ranking_pb2

ROOT = Path(__file__).resolve().parent.parent
MODULES = [common_pb2, encoding_pb2, fusion_pb2, gateway_pb2, hashing_pb2, ranking_pb2]


def test_generated_code_is_current():
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def _all_messages():
    for mod in MODULES:
        for name, desc in mod.DESCRIPTOR.message_types_by_name.items():
            yield mod, name, desc


def _fill(msg, depth=0):
    """Set every field of msg (recursively) to a non-default value."""
    from google.protobuf.descriptor import FieldDescriptor as F

    for field in msg.DESCRIPTOR.fields:
        if field.containing_oneof is not None and msg.WhichOneof(field.containing_oneof.name):
            continue  # one member per oneof
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_f, val_f = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            getattr(msg, field.name)[_scalar(key_f)] = _scalar(val_f)
            continue
        repeated = field.is_repeated
        if field.type == F.TYPE_MESSAGE:
            if depth > 3:
                continue
            target = getattr(msg, field.name).add() if repeated else getattr(msg, field.name)
            if field.message_type.full_name == "google.protobuf.Timestamp":
                target.seconds = 1_700_000_000
            else:
                _fill(target, depth + 1)
        else:
            value = _scalar(field)
            if repeated:
                getattr(msg, field.name).append(value)
            else:
                setattr(msg, field.name, value)


def _scalar(field):
    from google.protobuf.descriptor import FieldDescriptor as F

    if field.type == F.TYPE_ENUM:
        return field.enum_type.values[-1].number
    return {
        F.TYPE_STRING: "x",
        F.TYPE_BYTES: b"\x00\x01",
        F.TYPE_BOOL: True,
        F.TYPE_FLOAT: 1.5,
        F.TYPE_DOUBLE: 2.5,
    }.get(field.type, 7)


@pytest.mark.parametrize("mod,name,desc", list(_all_messages()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_message_round_trips(mod, name, desc):
    cls = getattr(mod, name)
    msg = cls()
    _fill(msg)
    data = msg.SerializeToString()
    back = cls.FromString(data)
    assert back == msg
    if desc.fields:
        assert data, f"{name} serialised to nothing"


def test_enums_start_with_unspecified():
    for mod in MODULES:
        for enum_name, enum in mod.DESCRIPTOR.enum_types_by_name.items():
            zero = enum.values_by_number[0].name
            assert zero.endswith("_UNSPECIFIED"), (enum_name, zero)


def test_every_rpc_has_its_own_request_and_response():
    seen = set()
    for mod in MODULES:
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                assert m.input_type.name.endswith("Request"), m.full_name
                assert m.output_type.name.endswith("Response"), m.full_name
                seen.add(m.input_type.full_name)
    assert "lungsearch.v1.SearchRequest" in seen


def test_package_is_versioned():
    pool = descriptor_pool.Default()
    assert pool.FindServiceByName("lungsearch.v1.LungSearch").full_name == "lungsearch.v1.LungSearch"
