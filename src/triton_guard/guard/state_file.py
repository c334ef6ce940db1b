"""The layout of one breaker's state file, and the pure functions that read and write an image of it.

Little-endian, FILE_SIZE = 2404 bytes with WINDOW_SIZE_MAX = 1024:

  off  size  field
    0     4  magic b"TGBR"
    4     2  layout version (u16)         another version: a new breaker
    6     2  name length in bytes (u16)
    8     4  CRC-32 of the breaker's name (u32): an image of another breaker never passes for this one's
   12     4  CRC-32 of bytes 16..96: the record's numbers (the "hot" block)
   16    80  the numbers, record.Numbers' fields in order (5 x u64/f64, 10 x u32)
   96     4  CRC-32 of bytes 100..end: name, ring and claim (the "cold" block)
  100   256  breaker name, UTF-8, zero padded
  356  1024  window ring, one byte per call (bit 0 failed, bit 1 slow)
 1380     8  settings fingerprint (u64; 0: no guard claimed the breaker yet)
 1388  1016  the claim: JSON {"models": [guard models], "settings": {...}}, zero padded

The request path reads only bytes 0..96 (`HOT_SIZE`), without a lock: the
header must be this breaker's and the hot CRC must match, else the reader
takes the locked path, which checks everything. Each block's CRC is written
with it, so a torn read, a half-done write of a killed process or flipped
bits show as a mismatch, never as a different state.
"""

from __future__ import annotations

import json
import struct
import zlib

from triton_guard import defaults
from triton_guard.guard.config import ConfigError
from triton_guard.guard.record import BreakerRecord, Numbers, State
from triton_guard.guard.store import settings_fingerprint

MAGIC = b"TGBR"
LAYOUT_VERSION = 3
NAME_MAX = 255  # bytes of UTF-8; the name field is NAME_MAX + 1 bytes
RING_CAPACITY = defaults.WINDOW_SIZE_MAX  # fixed by the layout: another capacity needs another LAYOUT_VERSION

_HEADER = struct.Struct("<4sHHI")  # magic, version, name length, CRC-32 of the name
_CRC = struct.Struct("<I")
_NUMBERS = struct.Struct("<QQdddIIIIIIIIII")  # record.Numbers, in order
assert len(_NUMBERS.unpack(bytes(_NUMBERS.size))) == len(Numbers._fields), "Numbers and the layout disagree"

HOT_CRC_OFFSET = _HEADER.size  # 12
NUMBERS_OFFSET = HOT_CRC_OFFSET + _CRC.size  # 16
HOT_SIZE = NUMBERS_OFFSET + _NUMBERS.size  # 96: what the request path reads
COLD_CRC_OFFSET = HOT_SIZE  # 96
NAME_OFFSET = COLD_CRC_OFFSET + _CRC.size  # 100
RING_OFFSET = NAME_OFFSET + NAME_MAX + 1  # 356
CLAIM_OFFSET = RING_OFFSET + RING_CAPACITY  # 1380
CLAIM_SIZE = 1024  # fingerprint (u64) + the claim's JSON
_FINGERPRINT = struct.Struct("<Q")
FILE_SIZE = CLAIM_OFFSET + CLAIM_SIZE  # 2404

_crc32 = zlib.crc32
_unpack_crc = _CRC.unpack_from
_unpack_numbers = _NUMBERS.unpack_from


def name_bytes(name: str) -> bytes:
    """A breaker's name as the file holds it (UTF-8); ValueError when the name field cannot hold it."""
    encoded = name.encode("utf-8")
    if not encoded or len(encoded) > NAME_MAX:
        raise ValueError(f"breaker name {name!r}: expected 1 to {NAME_MAX} bytes of UTF-8")
    return encoded


def header_prefix(name: str) -> bytes:
    """Bytes 0..12 of every valid image of breaker `name`."""
    encoded = name.encode("utf-8")
    return _HEADER.pack(MAGIC, LAYOUT_VERSION, len(encoded), _crc32(encoded))


def hot_numbers(hot: bytes, prefix: bytes) -> tuple | None:
    """The numbers of a hot block (bytes 0..HOT_SIZE) in Numbers' order, or None when it is not this breaker's or fails its CRC."""
    if hot[:HOT_CRC_OFFSET] != prefix or len(hot) < HOT_SIZE:
        return None
    if _unpack_crc(hot, HOT_CRC_OFFSET)[0] != _crc32(hot[NUMBERS_OFFSET:HOT_SIZE]):
        return None
    return _unpack_numbers(hot, NUMBERS_OFFSET)


def is_valid(image: bytes, prefix: bytes | None = None) -> bool:
    """Right size, header (this breaker's, when `prefix` is given) and both CRCs."""
    if len(image) != FILE_SIZE:
        return False
    if prefix is None:
        name = name_from_header(image)
        if name is None or image[:HOT_CRC_OFFSET] != header_prefix(name):
            return False
    elif image[:HOT_CRC_OFFSET] != prefix:
        return False
    view = memoryview(image)
    return (
        _unpack_crc(image, HOT_CRC_OFFSET)[0] == _crc32(view[NUMBERS_OFFSET:HOT_SIZE])
        and _unpack_crc(image, COLD_CRC_OFFSET)[0] == _crc32(view[NAME_OFFSET:])
    )


def record_of(image: bytes) -> BreakerRecord:
    return BreakerRecord.of(_unpack_numbers(image, NUMBERS_OFFSET), image[RING_OFFSET:CLAIM_OFFSET])


def state_name(image: bytes) -> str:
    return State(record_of(image).state).name


def pack_record(image: bytearray, rec: BreakerRecord) -> None:
    """Write `rec` into `image`, each block's CRC after it (a write cut short leaves a mismatch)."""
    if len(rec.ring) != RING_CAPACITY:
        raise ValueError(f"window ring of {len(rec.ring)} bytes, expected {RING_CAPACITY}")
    image[RING_OFFSET:CLAIM_OFFSET] = rec.ring
    _NUMBERS.pack_into(image, NUMBERS_OFFSET, *rec.numbers())
    seal(image)


def seal(image: bytearray) -> None:
    view = memoryview(image)
    _CRC.pack_into(image, HOT_CRC_OFFSET, _crc32(view[NUMBERS_OFFSET:HOT_SIZE]))
    _CRC.pack_into(image, COLD_CRC_OFFSET, _crc32(view[NAME_OFFSET:]))


def initial_image(name: str) -> bytearray:
    """A new breaker's image: CLOSED, never used, unclaimed."""
    encoded = name_bytes(name)
    image = bytearray(FILE_SIZE)
    image[:HOT_CRC_OFFSET] = header_prefix(name)
    image[NAME_OFFSET : NAME_OFFSET + len(encoded)] = encoded
    pack_record(image, BreakerRecord())
    return image


def name_from_header(head: bytes) -> str | None:
    """The breaker name in an image's first RING_OFFSET bytes, or None when they are not a breaker's."""
    if len(head) < RING_OFFSET:
        return None
    magic, version, name_len, _ = _HEADER.unpack_from(head, 0)
    if magic != MAGIC or version != LAYOUT_VERSION or name_len > NAME_MAX:
        return None
    try:
        return head[NAME_OFFSET : NAME_OFFSET + name_len].decode("utf-8")
    except UnicodeDecodeError:
        return None


# --- the claim region --------------------------------------------------------------------


def encode_claim(claim: dict) -> bytes:
    doc = json.dumps(claim, sort_keys=True, separators=(",", ":")).encode()
    if len(doc) > CLAIM_SIZE - _FINGERPRINT.size:
        raise ConfigError(f"too many guard models ({', '.join(claim['models'])}) for one breaker's claim")
    fingerprint = _FINGERPRINT.pack(settings_fingerprint(claim["settings"]))
    return fingerprint + doc.ljust(CLAIM_SIZE - _FINGERPRINT.size, b"\0")


def decode_claim(image: bytes) -> dict | None:
    region = image[CLAIM_OFFSET:]
    if len(region) < _FINGERPRINT.size or _FINGERPRINT.unpack_from(region)[0] == 0:
        return None
    try:
        return json.loads(region[_FINGERPRINT.size :].rstrip(b"\0"))
    except ValueError:
        return None
