"""Property tests of the chunk-id codec (schemas/ids.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tda.schemas import DEFAULT_CODEC, ChunkIdCodec, ChunkIdOverflowError, ChunkLocation

INT64_LIMIT = 2**63


@st.composite
def codecs(draw) -> ChunkIdCodec:
    """Any valid codec: three positive widths summing to at most 63."""
    dataset_bits = draw(st.integers(1, 61))
    file_bits = draw(st.integers(1, 62 - dataset_bits))
    ordinal_bits = draw(st.integers(1, 63 - dataset_bits - file_bits))
    return ChunkIdCodec(dataset_bits, file_bits, ordinal_bits)


@st.composite
def locations(draw, codec: ChunkIdCodec) -> ChunkLocation:
    return ChunkLocation(
        dataset=draw(st.integers(0, codec.max_dataset)),
        file_index=draw(st.integers(0, codec.max_file_index)),
        ordinal=draw(st.integers(0, codec.max_ordinal)),
    )


@st.composite
def codec_and_locations(draw, n: int = 1):
    codec = draw(st.one_of(st.just(DEFAULT_CODEC), codecs()))
    return codec, [draw(locations(codec)) for _ in range(n)]


def _enc(codec: ChunkIdCodec, loc: ChunkLocation) -> int:
    return codec.encode(loc.dataset, loc.file_index, loc.ordinal)


# ---------------------------------------------------------------------------------------
# Round trips and ranges


def test_default_codec_layout():
    assert DEFAULT_CODEC.to_dict() == {"dataset_bits": 8, "file_bits": 23, "ordinal_bits": 32}
    assert DEFAULT_CODEC.max_dataset == 255
    assert DEFAULT_CODEC.max_file_index == 2**23 - 1
    assert DEFAULT_CODEC.max_ordinal == 2**32 - 1
    assert DEFAULT_CODEC.encode(0, 0, 0) == 0
    assert DEFAULT_CODEC.encode(0, 0, 1) == 1
    assert DEFAULT_CODEC.encode(0, 1, 0) == 2**32
    assert DEFAULT_CODEC.encode(1, 0, 0) == 2**55
    assert DEFAULT_CODEC.encode(255, 2**23 - 1, 2**32 - 1) == INT64_LIMIT - 1


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, DEFAULT_CODEC.max_dataset),
    st.integers(0, DEFAULT_CODEC.max_file_index),
    st.integers(0, DEFAULT_CODEC.max_ordinal),
)
def test_default_round_trip_full_range(dataset, file_index, ordinal):
    chunk_id = DEFAULT_CODEC.encode(dataset, file_index, ordinal)
    assert isinstance(chunk_id, int)
    assert 0 <= chunk_id < INT64_LIMIT
    assert DEFAULT_CODEC.decode(chunk_id) == ChunkLocation(dataset, file_index, ordinal)
    # The id survives a trip through int64 storage (Parquet / numpy) unchanged.
    assert int(np.int64(chunk_id)) == chunk_id


@settings(max_examples=300, deadline=None)
@given(codec_and_locations())
def test_round_trip_any_widths(case):
    codec, (loc,) = case
    chunk_id = _enc(codec, loc)
    top = codec.dataset_bits + codec.file_bits + codec.ordinal_bits
    assert 0 <= chunk_id < 2**top <= INT64_LIMIT
    assert codec.decode(chunk_id) == loc
    assert codec.decode(np.int64(chunk_id)) == loc


@settings(max_examples=200, deadline=None)
@given(codecs())
def test_extreme_values_round_trip(codec):
    for loc in (
        ChunkLocation(0, 0, 0),
        ChunkLocation(codec.max_dataset, codec.max_file_index, codec.max_ordinal),
        ChunkLocation(codec.max_dataset, 0, 0),
        ChunkLocation(0, codec.max_file_index, 0),
        ChunkLocation(0, 0, codec.max_ordinal),
    ):
        chunk_id = _enc(codec, loc)
        assert 0 <= chunk_id < INT64_LIMIT
        assert codec.decode(chunk_id) == loc
    top = codec.dataset_bits + codec.file_bits + codec.ordinal_bits
    assert codec.encode(codec.max_dataset, codec.max_file_index, codec.max_ordinal) == 2**top - 1


@settings(max_examples=300, deadline=None)
@given(codec_and_locations(n=2))
def test_distinct_locations_distinct_ids_and_order(case):
    codec, (a, b) = case
    id_a, id_b = _enc(codec, a), _enc(codec, b)
    assert (id_a == id_b) == (a == b)
    key_a = (a.dataset, a.file_index, a.ordinal)
    key_b = (b.dataset, b.file_index, b.ordinal)
    assert (id_a < id_b) == (key_a < key_b)
    assert (id_a > id_b) == (key_a > key_b)


@settings(max_examples=100, deadline=None)
@given(codec_and_locations(n=20))
def test_sorting_ids_sorts_locations(case):
    codec, locs = case
    by_id = sorted(locs, key=lambda loc: _enc(codec, loc))
    assert by_id == sorted(locs)  # ChunkLocation orders (dataset, file_index, ordinal)


def test_neighbouring_fields_do_not_collide():
    # The last ordinal of file f is followed by ordinal 0 of file f + 1, and so on upward.
    c = ChunkIdCodec(2, 3, 4)
    assert c.encode(0, 0, 15) + 1 == c.encode(0, 1, 0)
    assert c.encode(0, 7, 15) + 1 == c.encode(1, 0, 0)
    ids = [c.encode(d, f, o) for d in range(4) for f in range(8) for o in range(16)]
    assert ids == list(range(2**9))


# ---------------------------------------------------------------------------------------
# Vectorised forms


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_encode_many_matches_encode(data):
    codec = data.draw(st.one_of(st.just(DEFAULT_CODEC), codecs()))
    dataset = data.draw(st.integers(0, codec.max_dataset))
    file_index = data.draw(st.integers(0, codec.max_file_index))
    ordinals = data.draw(st.lists(st.integers(0, codec.max_ordinal), max_size=30))
    ids = codec.encode_many(dataset, file_index, np.asarray(ordinals, dtype=np.int64))
    assert isinstance(ids, np.ndarray)
    assert ids.dtype == np.int64
    assert ids.shape == (len(ordinals),)
    assert ids.tolist() == [codec.encode(dataset, file_index, o) for o in ordinals]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_decode_many_matches_decode(data):
    codec = data.draw(st.one_of(st.just(DEFAULT_CODEC), codecs()))
    locs = data.draw(st.lists(locations(codec), max_size=30))
    ids = np.asarray([_enc(codec, loc) for loc in locs], dtype=np.int64)
    datasets, files, ordinals = codec.decode_many(ids)
    for arr in (datasets, files, ordinals):
        assert arr.dtype == np.int64
        assert arr.shape == (len(locs),)
    decoded = [codec.decode(i) for i in ids.tolist()]
    assert datasets.tolist() == [d.dataset for d in decoded] == [loc.dataset for loc in locs]
    assert files.tolist() == [d.file_index for d in decoded] == [loc.file_index for loc in locs]
    assert ordinals.tolist() == [d.ordinal for d in decoded] == [loc.ordinal for loc in locs]


def test_encode_many_empty():
    ids = DEFAULT_CODEC.encode_many(1, 2, np.zeros(0, dtype=np.int64))
    assert ids.dtype == np.int64 and ids.shape == (0,)
    datasets, files, ordinals = DEFAULT_CODEC.decode_many(ids)
    assert datasets.shape == files.shape == ordinals.shape == (0,)


# ---------------------------------------------------------------------------------------
# Overflow and invalid ids


@settings(max_examples=100, deadline=None)
@given(codecs(), st.integers(0, 2**70))
def test_dataset_overflow(codec, excess):
    with pytest.raises(ChunkIdOverflowError, match=r"overflow: dataset \d+ does not fit"):
        codec.encode(codec.max_dataset + 1 + excess, 0, 0)


@settings(max_examples=100, deadline=None)
@given(codecs(), st.integers(0, 2**70))
def test_file_index_overflow(codec, excess):
    with pytest.raises(ChunkIdOverflowError, match=r"overflow: file index \d+ does not fit"):
        codec.encode(0, codec.max_file_index + 1 + excess, 0)


@settings(max_examples=100, deadline=None)
@given(codecs(), st.integers(0, 2**70))
def test_ordinal_overflow(codec, excess):
    with pytest.raises(ChunkIdOverflowError, match=r"overflow: ordinal \d+ does not fit"):
        codec.encode(0, 0, codec.max_ordinal + 1 + excess)


@pytest.mark.parametrize(
    ("args", "field"),
    [((-1, 0, 0), "dataset"), ((0, -1, 0), "file index"), ((0, 0, -1), "ordinal")],
)
def test_negative_fields_rejected(args, field):
    with pytest.raises(ChunkIdOverflowError, match=f"overflow: {field} -1 does not fit"):
        DEFAULT_CODEC.encode(*args)


def test_overflow_message_names_width_and_range():
    codec = ChunkIdCodec(2, 3, 4)
    with pytest.raises(ChunkIdOverflowError) as err:
        codec.encode(0, 8, 0)
    message = str(err.value)
    assert "file index 8" in message
    assert "3 bits" in message
    assert "0..7" in message
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("ordinal", [-1, 2**32])
def test_encode_many_ordinal_overflow(ordinal):
    ordinals = np.asarray([0, ordinal, 5], dtype=np.int64)
    with pytest.raises(ChunkIdOverflowError, match="ordinal"):
        DEFAULT_CODEC.encode_many(0, 0, ordinals)


def test_encode_many_checks_dataset_and_file():
    with pytest.raises(ChunkIdOverflowError, match="dataset"):
        DEFAULT_CODEC.encode_many(256, 0, np.arange(3))
    with pytest.raises(ChunkIdOverflowError, match="file index"):
        DEFAULT_CODEC.encode_many(0, 2**23, np.arange(3))


@settings(max_examples=100, deadline=None)
@given(codecs(), st.integers(0, 2**64))
def test_decode_rejects_ids_above_range(codec, excess):
    top = codec.dataset_bits + codec.file_bits + codec.ordinal_bits
    with pytest.raises(ChunkIdOverflowError, match="not a chunk id of this codec"):
        codec.decode(2**top + excess)


@settings(max_examples=100, deadline=None)
@given(codecs(), st.integers(1, 2**63))
def test_decode_rejects_negative_ids(codec, magnitude):
    with pytest.raises(ChunkIdOverflowError, match="not a chunk id of this codec"):
        codec.decode(-magnitude)


def test_decode_many_rejects_out_of_range():
    small = ChunkIdCodec(2, 3, 4)  # ids 0 .. 511
    assert small.decode_many(np.asarray([0, 511]))[2].tolist() == [0, 15]
    with pytest.raises(ChunkIdOverflowError, match="outside this codec's range"):
        small.decode_many(np.asarray([0, 512], dtype=np.int64))
    with pytest.raises(ChunkIdOverflowError, match="outside this codec's range"):
        small.decode_many(np.asarray([-1, 3], dtype=np.int64))
    with pytest.raises(ChunkIdOverflowError, match="outside this codec's range"):
        DEFAULT_CODEC.decode_many(np.asarray([5, -(2**62)], dtype=np.int64))


# ---------------------------------------------------------------------------------------
# Widths and serialisation


@pytest.mark.parametrize(
    "widths",
    [(32, 32, 0), (0, 23, 32), (8, 0, 32), (-1, 23, 32), (8, 23, 33), (21, 21, 22), (63, 1, 1)],
)
def test_invalid_widths_rejected(widths):
    with pytest.raises(ValueError):
        ChunkIdCodec(*widths)


def test_width_sum_over_63_message():
    with pytest.raises(ValueError, match="need 64 bits"):
        ChunkIdCodec(8, 24, 32)


@pytest.mark.parametrize("field", ["dataset_bits", "file_bits", "ordinal_bits"])
@pytest.mark.parametrize("bad", [True, False, 0, -3, 8.0, "8", None])
def test_non_positive_or_non_int_widths_rejected(field, bad):
    kwargs = {"dataset_bits": 8, "file_bits": 23, "ordinal_bits": 32}
    kwargs[field] = bad
    with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
        ChunkIdCodec(**kwargs)


def test_widths_summing_to_63_accepted():
    assert ChunkIdCodec(1, 1, 61).max_ordinal == 2**61 - 1
    assert ChunkIdCodec(61, 1, 1).max_dataset == 2**61 - 1


@settings(max_examples=100, deadline=None)
@given(codecs())
def test_dict_round_trip(codec):
    data = codec.to_dict()
    assert data == {
        "dataset_bits": codec.dataset_bits,
        "file_bits": codec.file_bits,
        "ordinal_bits": codec.ordinal_bits,
    }
    assert ChunkIdCodec.from_dict(data) == codec
    # From JSON-ish data (strings) too, and extra keys do not matter.
    assert ChunkIdCodec.from_dict({k: str(v) for k, v in data.items()} | {"x": 1}) == codec


def test_from_dict_validates():
    with pytest.raises(ValueError):
        ChunkIdCodec.from_dict({"dataset_bits": 40, "file_bits": 20, "ordinal_bits": 20})
    with pytest.raises(KeyError):
        ChunkIdCodec.from_dict({"dataset_bits": 8, "file_bits": 23})
