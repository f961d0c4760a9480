"""The reference side of the gateway's proto3 JSON differential tests.

Reads a JSON array of operations (argv[2]) on the message `argv[3]`, with
the descriptors of argv[1] (a FileDescriptorSet), and writes one result per
operation to stdout as a JSON array. The protobuf package's own
`json_format` (upb) does the work:

- {"op": "decode", "json": text, "ignore_unknown": bool}
    -> {"ok": true, "binary": base64 of the deterministic encoding}
     | {"ok": false, "error": text}
- {"op": "encode", "binary": base64}
    -> {"ok": true, "json": text} | {"ok": false, "error": text}
- {"op": "reencode", "binary": base64}: the message again, in the
  deterministic encoding, and in the text format (for reports)
    -> {"ok": true, "binary": base64, "text": text}
- {"op": "encode_text", "text": text format}: the message written in the
  text format, encoded as above, with its binary encoding too
    -> {"ok": ..., "json": ..., "binary": ...}
"""

import base64
import json
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, text_format
# Loading the well-known types puts their files in the default pool first.
from google.protobuf import any_pb2, duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2, wrappers_pb2  # noqa: F401


def load(descriptor_set_path, message_name):
    pool = descriptor_pool.Default()
    with open(descriptor_set_path, "rb") as f:
        files = descriptor_pb2.FileDescriptorSet.FromString(f.read()).file
    for proto in files:
        try:
            pool.FindFileByName(proto.name)
        except KeyError:
            pool.Add(proto)
    return pool, message_factory.GetMessageClass(pool.FindMessageTypeByName(message_name))


def encode(message, pool):
    return json_format.MessageToJson(message, descriptor_pool=pool)


def run(operation, pool, cls):
    try:
        if operation["op"] == "decode":
            message = cls()
            json_format.Parse(
                operation["json"], message, ignore_unknown_fields=operation.get("ignore_unknown", False),
                descriptor_pool=pool,
            )
            return {"ok": True, "binary": base64.b64encode(message.SerializeToString(deterministic=True)).decode()}
        if operation["op"] == "encode":
            message = cls.FromString(base64.b64decode(operation["binary"]))
            # Map entries in key order (they come in the sender's hash order), so the text is the same every run.
            message = cls.FromString(message.SerializeToString(deterministic=True))
            return {"ok": True, "json": encode(message, pool)}
        if operation["op"] == "encode_text":
            message = text_format.Parse(operation["text"], cls(), descriptor_pool=pool)
            binary = base64.b64encode(message.SerializeToString(deterministic=True)).decode()
            try:
                return {"ok": True, "json": encode(message, pool), "binary": binary}
            except Exception as error:  # noqa: BLE001 - every refusal is an answer
                return {"ok": False, "error": str(error), "binary": binary}
        if operation["op"] == "reencode":
            message = cls.FromString(base64.b64decode(operation["binary"]))
            canonical = base64.b64encode(message.SerializeToString(deterministic=True)).decode()
            return {"ok": True, "binary": canonical, "text": text_format.MessageToString(message, as_one_line=True)}
        return {"ok": False, "error": "unknown operation " + operation["op"]}
    except Exception as error:  # noqa: BLE001 - every refusal is an answer
        return {"ok": False, "error": "%s: %s" % (type(error).__name__, error)}


def main():
    pool, cls = load(sys.argv[1], sys.argv[3])
    with open(sys.argv[2]) as f:
        operations = json.load(f)
    json.dump([run(operation, pool, cls) for operation in operations], sys.stdout)


if __name__ == "__main__":
    main()
