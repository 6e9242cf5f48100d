"""Datum and BlobProto bytes against the protobuf runtime compiled from tests/caffe.proto."""

import numpy as np
import pytest

from etl.datum import decode_blobproto, decode_datum, encode_blobproto, encode_datum

pytestmark = pytest.mark.quick  # unit tests: each well under a second, no conversion run


@pytest.mark.parametrize("encoded", [True, False])
@pytest.mark.parametrize("label", [0, 7, 999, 2**31 - 1])
def test_datum_matches_protobuf(caffe_pb2, encoded, label):
    data = bytes(range(256)) * 3
    ours = encode_datum(3, 224, 200, data, label, encoded)
    theirs = caffe_pb2.Datum()
    theirs.ParseFromString(ours)
    assert (theirs.channels, theirs.height, theirs.width, theirs.label) == (3, 224, 200, label)
    assert theirs.data == data
    assert theirs.encoded is encoded
    assert theirs.HasField("encoded") is encoded  # raw records leave the field unset, like Caffe's tools
    assert theirs.SerializeToString() == ours  # byte for byte what protobuf itself writes


def test_decode_datum_reads_protobuf_output(caffe_pb2):
    msg = caffe_pb2.Datum(channels=1, height=5, width=6, data=b"\x01" * 30, label=-3, encoded=False)
    msg.float_data.extend([1.5, -2.0])
    d = decode_datum(msg.SerializeToString())
    assert (d.channels, d.height, d.width, d.label, d.encoded) == (1, 5, 6, -3, False)
    assert d.data == b"\x01" * 30
    assert d.float_data == (1.5, -2.0)


def test_blobproto_matches_protobuf(caffe_pb2):
    mean = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5) / 7
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString(encode_blobproto(mean))
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5)
    np.testing.assert_array_equal(np.array(blob.data, dtype=np.float32).reshape(3, 4, 5), mean)
    assert blob.SerializeToString() == encode_blobproto(mean)
    np.testing.assert_array_equal(decode_blobproto(blob.SerializeToString()), mean)


def test_malformed_datum_raises():
    with pytest.raises(ValueError):
        decode_datum(b"\x22\x10abc")  # length 16, 3 bytes present
