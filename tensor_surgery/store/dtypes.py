"""Every dtype of the safetensors spec, and how (or whether) its values decode with numpy/ml_dtypes.

Bytes on disk are little-endian and row-major. Sub-byte dtypes pack elements densely:
F4 holds two E2M1 values per byte, element 2i in the low nibble and 2i+1 in the high nibble
(PyTorch's `float4_e2m1fn_x2` layout, the one real writers use). F6 packs four values in three
bytes, but neither the safetensors spec nor any framework fixes the bit order, so F6 values are
shown as bytes only and every value read says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import ml_dtypes
import numpy as np

from ..errors import UnsupportedDtype


@dataclass(frozen=True)
class DType:
    name: str  # as written in the header, e.g. "BF16"
    bits: int  # per element
    numpy: np.dtype | None  # decoded element type; None when values cannot be decoded
    kind: str  # "float", "int", "uint", "bool", "complex"
    packed: bool = False  # sub-byte: several elements share a byte

    @property
    def itemsize(self) -> int:
        """Bytes per element for byte-aligned dtypes."""
        return self.bits // 8

    @property
    def decodable(self) -> bool:
        return self.numpy is not None

    @cached_property
    def storage(self) -> np.dtype:
        """Unsigned integer type with the element's width: the raw bit pattern of one element."""
        if self.packed:
            return np.dtype(np.uint8)
        return np.dtype(f"<u{self.itemsize}")

    @cached_property
    def element(self) -> np.dtype:
        """Little-endian numpy dtype used to view the bytes (byte-aligned dtypes only)."""
        if self.numpy is None or self.packed:
            raise self.undecodable()
        return self.numpy.newbyteorder("<") if self.numpy.itemsize > 1 else self.numpy

    @cached_property
    def unit(self) -> tuple[int, int]:
        """(bytes, elements) of the smallest whole storage unit: F4 packs 2 elements in a byte,
        F6 packs 4 in 3 bytes, every other dtype is one element of itemsize bytes."""
        if self.name == "F4":
            return 1, 2
        if self.bits == 6:
            return 3, 4
        return self.itemsize, 1

    def nbytes(self, numel: int) -> int:
        """Bytes taken by `numel` elements (caller checks bit alignment for packed dtypes)."""
        return numel * self.bits // 8

    def undecodable(self) -> UnsupportedDtype:
        return UnsupportedDtype(
            f"{self.name} values cannot be decoded: the safetensors spec does not fix how its "
            f"{self.bits}-bit elements are packed. Use the hex view to see and edit its bytes.",
            dtype=self.name,
        )


def _d(name: str, bits: int, np_type, kind: str, packed: bool = False) -> DType:
    return DType(name, bits, None if np_type is None else np.dtype(np_type), kind, packed)


DTYPES: dict[str, DType] = {
    d.name: d
    for d in [
        _d("BOOL", 8, np.bool_, "bool"),
        _d("U8", 8, np.uint8, "uint"),
        _d("I8", 8, np.int8, "int"),
        _d("I16", 16, np.int16, "int"),
        _d("U16", 16, np.uint16, "uint"),
        _d("I32", 32, np.int32, "int"),
        _d("U32", 32, np.uint32, "uint"),
        _d("I64", 64, np.int64, "int"),
        _d("U64", 64, np.uint64, "uint"),
        _d("F16", 16, np.float16, "float"),
        _d("BF16", 16, ml_dtypes.bfloat16, "float"),
        _d("F32", 32, np.float32, "float"),
        _d("F64", 64, np.float64, "float"),
        _d("F8_E4M3", 8, ml_dtypes.float8_e4m3fn, "float"),
        _d("F8_E5M2", 8, ml_dtypes.float8_e5m2, "float"),
        _d("F8_E8M0", 8, ml_dtypes.float8_e8m0fnu, "float"),
        _d("F8_E4M3FNUZ", 8, ml_dtypes.float8_e4m3fnuz, "float"),
        _d("F8_E5M2FNUZ", 8, ml_dtypes.float8_e5m2fnuz, "float"),
        _d("F4", 4, ml_dtypes.float4_e2m1fn, "float", packed=True),
        _d("F6_E2M3", 6, None, "float", packed=True),
        _d("F6_E3M2", 6, None, "float", packed=True),
        _d("C64", 64, np.complex64, "complex"),
    ]
}


def get_dtype(name: str) -> DType:
    return DTYPES[name]


def decode_f4_at(raw: np.ndarray, flat_index: np.ndarray) -> np.ndarray:
    """F4 values at the given flat element indices (low nibble holds the even element)."""
    byte = raw[flat_index >> 1]
    nibble = np.where(flat_index & 1, byte >> 4, byte & 0x0F).astype(np.uint8)
    return nibble.view(ml_dtypes.float4_e2m1fn)


def value_table(dtype: DType) -> np.ndarray:
    """For dtypes of at most 16 bits: every bit pattern's value as float64 (index = pattern).

    This is what makes statistics of small dtypes exact and single-pass: count each pattern once,
    then every moment, extreme and percentile follows from the counts.
    """
    return _value_table(dtype.name)


_TABLES: dict[str, np.ndarray] = {}


def _value_table(name: str) -> np.ndarray:
    table = _TABLES.get(name)
    if table is None:
        dt = DTYPES[name]
        if dt.name == "F4":
            table = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float64)
        elif dt.bits <= 16 and dt.numpy is not None and dt.kind != "complex":
            patterns = np.arange(1 << dt.bits, dtype=dt.storage)
            values = patterns.view(dt.element)
            with np.errstate(invalid="ignore"):  # NaN patterns stay NaN
                table = values.astype(np.float64)
        else:
            raise ValueError(f"no value table for {name}")
        table.setflags(write=False)
        _TABLES[name] = table
    return table
