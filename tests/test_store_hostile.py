"""Hostile model files: every malformed case is refused with the right error, fast and in bounded
memory; a fuzzed header never escapes as anything but a SurgeryError; files changed under an open
model raise ModelChanged instead of crashing."""

from __future__ import annotations

import json
import os
import signal
import struct
import tempfile
import gc
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from tensor_surgery import errors
from tensor_surgery.errors import ModelChanged, SurgeryError
from tensor_surgery.store import TensorReader, open_model

from tensor_surgery.store.header import _DuplicateKey, _loads_fast, loads_unique

from .hostile import CORPUS, EXPECTED, FIELDS, VALID_CASES, VALID_WARNINGS, entry, shard_file, st_bytes

# -- the corpus -----------------------------------------------------------------------------


@contextmanager
def deadline(seconds: float):
    """Fail instead of hanging: a regression on the FIFO or huge-shape cases blocks forever."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)



@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_case_is_refused(name: str, tmp_path: Path) -> None:
    error_name, substring = EXPECTED[name]
    error_cls = getattr(errors, error_name)
    path = CORPUS[name](tmp_path)

    gc.collect()  # the garbage earlier tests left (torch models...) is not this refusal's time
    t0 = time.perf_counter()
    with pytest.raises(SurgeryError) as info, deadline(5):
        open_model(path)
    elapsed = time.perf_counter() - t0

    err = info.value
    assert type(err) is error_cls, f"{name}: {type(err).__name__}: {err.message}"
    assert substring in err.message, f"{name}: {substring!r} not in {err.message!r}"
    # the message names what was opened (a file, an index or a folder; a shard's own path
    # holds the folder's name)
    assert path.name in err.message, f"{name}: {path.name!r} not in {err.message!r}"
    assert "file" in err.context, name
    if name in FIELDS:
        assert err.context.get("field") == FIELDS[name], (name, err.context)
    assert elapsed < 0.5, f"{name}: took {elapsed:.3f} s"
    assert len(err.message) < 2000, f"{name}: a hostile header floods the message"
    # the JSON error body of the web layer must encode
    json.dumps(err.to_dict(), allow_nan=False).encode("utf-8")

    # and in bounded memory (the huge-length and huge-shape cases must not allocate by the field)
    tracemalloc.start()
    try:
        with pytest.raises(error_cls):
            open_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{name}: peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", sorted(VALID_CASES))
def test_valid_case_opens_like_the_reference(name: str, tmp_path: Path) -> None:
    """Files the format allows (padding before the '{', unknown fields in an entry) open with the
    bytes the safetensors library reads from the same file; where the installed library refuses
    them (an older one, before April 2026's leading whitespace), numpy slices of the data stand in."""
    header, data = VALID_CASES[name]
    path = tmp_path / "model.safetensors"
    path.write_bytes(st_bytes(header, data))
    parsed = json.loads(header)
    expected = _reference_bytes(path)
    if expected is None:
        raw = np.frombuffer(data, np.uint8)
        expected = {k: raw[v["data_offsets"][0] : v["data_offsets"][1]].tobytes()
                    for k, v in parsed.items() if k != "__metadata__"}
    with open_model(path) as model:
        assert {n: bytes(r.raw()) for n, r in model.tensors.items()} == expected
        assert {n: list(r.shape) for n, r in model.tensors.items()} == {
            k: v["shape"] for k, v in parsed.items() if k != "__metadata__"}
        if name in VALID_WARNINGS:
            assert len(model.warnings) == 1 and VALID_WARNINGS[name] in model.warnings[0], model.warnings
            assert model.summary()["warnings"] == model.warnings  # what the API and `ls` show
        else:
            assert model.warnings == []


def test_unknown_entry_fields_warn_in_sharded_models(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    s1, s2 = "m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors"
    (folder / s1).write_bytes(st_bytes({"a": {**entry("U8", [2], 0, 2), "scale": 0.5}}, b"\1\2"))
    (folder / s2).write_bytes(shard_file({"b": ("U8", [1], b"\3")}))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": s1, "b": s2}}))
    with open_model(folder) as model:
        assert bytes(model.tensor("a").raw()) == b"\1\2"
        assert len(model.warnings) == 1 and model.warnings[0].startswith(f"{s1}: 1 tensor entry has fields")


def test_foreign_folder_lists_the_files_it_found(tmp_path: Path) -> None:
    path = CORPUS["folder_only_pytorch_bin"](tmp_path)
    with pytest.raises(errors.InvalidModelFile) as info:
        open_model(path)
    assert info.value.context["foreign_files"] == [
        {"name": "pytorch_model-00001-of-00002.bin", "format": "pytorch_zip"},
        {"name": "pytorch_model-00002-of-00002.bin", "format": "pytorch_zip"},
    ]
    assert "convert it to .safetensors" in info.value.message


def test_plausible_length_with_pickle_like_bytes_is_not_called_a_pickle(tmp_path: Path) -> None:
    """A safetensors length field of 0x0280 starts with the bytes of a pickle's PROTO 2: a broken
    header behind it is still reported as a broken header."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(st_bytes(b"}" + b" " * 0x27F, b""))
    assert path.read_bytes()[:3] == b"\x80\x02\x00"
    with pytest.raises(errors.InvalidModelFile) as info:
        open_model(path)
    assert "starting with '{'" in info.value.message and info.value.context["field"] == "header"


# -- duplicate keys through the fast (orjson) parser -------------------------------------------

_tricky_text = st.sampled_from(["a", "b", "a:b", ":", 'q"', "\\", "\\\"", "x\u00e9", "\ud83d\ude00", "", " "])
_json_key = st.one_of(_tricky_text, st.text(alphabet='ab:"\\ {}', max_size=4))
# (integers past 64 bits come back from orjson as floats: header validation re-parses strictly on
# any refusal, so those report as before; see test_hostile_case_is_refused's offsets_past_u64)
_leaf = st.one_of(st.integers(-3, 2**64 - 1), _tricky_text, st.lists(st.integers(0, 9), max_size=3))


@st.composite
def _object_text(draw, depth: int = 0) -> str:
    """JSON object text, possibly with duplicate keys (json.dumps cannot write those)."""
    keys = draw(st.lists(_json_key, max_size=5))
    if keys and draw(st.booleans()):
        keys.append(draw(st.sampled_from(keys)))  # a duplicate
    parts = []
    for k in keys:
        if depth < 2 and draw(st.booleans()):
            value = draw(_object_text(depth + 1))
        else:
            value = json.dumps(draw(_leaf))
        parts.append(json.dumps(k) + draw(st.sampled_from([":", " : ", ":\n"])) + value)
    return "{" + ",".join(parts) + "}"


def _strict(text: str):
    from tensor_surgery.store.header import _no_duplicates, _reject_constant

    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(_object_text())
def test_fast_parser_agrees_with_the_strict_one(text: str) -> None:
    """orjson keeps the last duplicate silently: whatever `loads_unique` returns, the strict
    parser (which refuses every duplicate) returns too, and the same duplicates are refused."""
    try:
        want = _strict(text)
    except _DuplicateKey:
        with pytest.raises(_DuplicateKey):
            loads_unique(text)
        assert _loads_fast(text.encode()) is None
        return
    assert loads_unique(text) == want
    assert loads_unique(text.encode()) == want
    fast = _loads_fast(text.encode())
    assert fast is None or fast == want


def test_fast_parser_takes_the_usual_header() -> None:
    """The fast path must actually be taken for headers as writers make them, or listing slows."""
    header = {"__metadata__": {"format": "pt", "note": "a: b"},
              **{f"model.layers.{i}.w": entry("BF16", [4, 4], 32 * i, 32 * (i + 1)) for i in range(100)}}
    for text in (json.dumps(header), json.dumps(header, separators=(",", ":"))):
        assert _loads_fast(text.encode()) == header
    assert _loads_fast(b'{"a": {"b": 1, "b": 2}}') is None
    assert _loads_fast(b'{"a\\"": 1, "a\\"": 2}') is None


def test_corpus_is_complete() -> None:
    assert len(CORPUS) >= 30
    assert set(CORPUS) == set(EXPECTED)
    assert set(FIELDS) <= set(CORPUS)


def test_guard_sees_index_and_every_shard(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    s1, s2 = "m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors"
    (folder / s1).write_bytes(shard_file({"a": ("U8", [2], b"\1\2")}))
    (folder / s2).write_bytes(shard_file({"b": ("U8", [1], b"\3")}))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": s1, "b": s2}}))
    seen: list[str] = []
    open_model(folder, guard=seen.append).close()
    assert [os.path.basename(p) for p in seen] == ["model.safetensors.index.json", s1, s2]

    def refuse_second(p: str) -> None:
        if p.endswith(s2):
            raise errors.PathNotAllowed(f"{p}: outside the allowed roots", file=p)

    with pytest.raises(errors.PathNotAllowed):
        open_model(folder, guard=refuse_second)


# -- fuzzing the header parser --------------------------------------------------------------


def _base_file() -> bytes:
    """A small valid file with several dtypes, a scalar, an empty tensor and a padded header
    (writers pad the header with spaces to a multiple of 8)."""
    rng = np.random.default_rng(7)
    tensors = [
        ("w", "F32", [3, 4], rng.standard_normal(12).astype(np.float32).tobytes()),
        ("h", "BF16", [5], rng.integers(0, 256, 10, dtype=np.uint8).tobytes()),
        ("i", "I64", [2], np.array([-3, 2**40], np.int64).tobytes()),
        ("f", "F4", [2, 4], bytes([0x12, 0x9F, 0x70, 0x0E])),
        ("b", "BOOL", [3], b"\0\1\1"),
        ("s", "F16", [], np.float16(1.5).tobytes()),
        ("e", "U8", [0, 3], b""),
        ("u", "U16", [2, 2], rng.integers(0, 256, 8, dtype=np.uint8).tobytes()),
    ]
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, dt, shape, raw in tensors:
        header[name] = entry(dt, shape, len(data), len(data) + len(raw))
        data += raw
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-(len(text) + 8) % 8)
    return st_bytes(text, data)


BASE = _base_file()
HEADER_END = 8 + struct.unpack("<Q", BASE[:8])[0]
_DIGITS = [i for i in range(8, HEADER_END) if chr(BASE[i]).isdigit()]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("flip_header"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("digit"), st.integers(0, 10**6), st.sampled_from("0123456789")),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert_header"), st.integers(0, 10**6), st.sampled_from([b"{", b"}", b"[", b'"', b",", b"0", b"-", b" ", b"\\u", b":"])),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8)),
    st.tuples(st.just("length"), st.integers(-16, 16)),
)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    b = bytearray(data)
    for op in ops:
        kind = op[0]
        if kind == "length":
            n = max(0, struct.unpack("<Q", bytes(b[:8]).ljust(8, b"\0"))[0] + op[1])
            b[:8] = struct.pack("<Q", n)
        elif not b:
            continue
        elif kind == "flip":
            b[op[1] % len(b)] ^= 1 << op[2]
        elif kind == "flip_header":
            b[op[1] % min(len(b), HEADER_END)] ^= 1 << op[2]
        elif kind == "digit":
            pos = _DIGITS[op[1] % len(_DIGITS)]
            if pos < len(b):
                b[pos] = ord(op[2])
        elif kind == "truncate":
            del b[op[1] % len(b):]
        elif kind in ("insert", "insert_header"):
            limit = len(b) if kind == "insert" else min(len(b), HEADER_END)
            pos = op[1] % (limit + 1)
            b[pos:pos] = op[2]
        elif kind == "delete":
            pos = op[1] % len(b)
            del b[pos : pos + op[2]]
    return bytes(b)


def _reference_bytes(path: Path) -> dict[str, bytes] | None:
    """Each tensor's bytes as the safetensors reference reads them; None if it refuses the file."""
    try:
        out = {}
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                out[name] = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        return out
    except Exception:  # the reference's own errors: any refusal is a refusal
        return None


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_fuzzed_header_opens_or_raises_surgery_error(ops: list[tuple]) -> None:
    data = mutate(BASE, ops)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.safetensors"
        path.write_bytes(data)
        try:
            model = open_model(path)
        except SurgeryError:
            return  # refused cleanly (any other exception type fails the test)
        with model:
            reference = _reference_bytes(path)
            # we validate at least as strictly as the reference: what we accept, it accepts
            assert reference is not None, "open_model accepted a file the reference refuses"
            assert set(reference) == set(model.tensors)
            for name, ref in model.tensors.items():
                ours = bytes(ref.raw())
                assert ours == reference[name], name
                assert len(ours) == ref.nbytes
                # and reading through the element path never crashes either
                reader = TensorReader(ref)
                if ref.dtype.decodable and ref.numel:
                    reader.read_values(tuple(slice(0, n) for n in ref.shape))


def test_fuzz_base_file_is_valid_for_both(tmp_path: Path) -> None:
    path = tmp_path / "base.safetensors"
    path.write_bytes(BASE)
    with open_model(path) as model:
        reference = _reference_bytes(path)
        assert reference is not None
        assert {n: bytes(r.raw()) for n, r in model.tensors.items()} == reference
        assert model.metadata == {"format": "pt"}


# -- files changed on disk after opening ----------------------------------------------------

_PAST_NS = 1_600_000_000 * 10**9  # files start old, so a rewrite always moves the mtime


def _model_file(path: Path, values: np.ndarray) -> Path:
    path.write_bytes(st_bytes({"w": entry("F32", list(values.shape), 0, values.nbytes)}, values.tobytes()))
    os.utime(path, ns=(_PAST_NS, _PAST_NS))
    return path


@pytest.mark.parametrize("read_first", [True, False], ids=["mapped", "not-yet-mapped"])
@pytest.mark.parametrize("change", ["truncate", "rewrite_in_place", "replace", "delete", "append"])
def test_changed_file_raises_model_changed(tmp_path: Path, change: str, read_first: bool) -> None:
    values = np.arange(4096, dtype=np.float32)
    path = _model_file(tmp_path / "m.safetensors", values)
    model = open_model(path)
    reader = TensorReader(model.tensor("w"))
    if read_first:
        assert np.array_equal(reader.read_values((slice(0, 4096),)), values)

    if change == "truncate":
        os.truncate(path, 100)  # reading the old mapping past here would be SIGBUS
    elif change == "rewrite_in_place":
        with open(path, "r+b") as f:  # same size, same inode, new bytes
            f.seek(-4, os.SEEK_END)
            f.write(b"\xff\xff\xff\xff")
    elif change == "replace":
        _model_file(tmp_path / "new.safetensors", values + 1)
        os.replace(tmp_path / "new.safetensors", path)
    elif change == "delete":
        path.unlink()
    elif change == "append":
        with open(path, "ab") as f:
            f.write(b"\0" * 8)
    if read_first and change in ("replace", "delete"):
        # the mapped file itself is intact (a valid, stale map): its path is re-checked at most
        # every PATH_CHECK_INTERVAL seconds, so the change shows up within that time
        from tensor_surgery.store.model import PATH_CHECK_INTERVAL

        time.sleep(PATH_CHECK_INTERVAL + 0.05)

    for read in (
        lambda: reader.read_values((slice(0, 4096),)),
        lambda: reader.read_bytes(0, 16),
        lambda: reader.chunk_patterns(0, 10),
        lambda: model.tensor("w").raw(),
    ):
        with pytest.raises(ModelChanged) as info:
            read()
        assert str(path) in info.value.message
    model.close()
    # reopening validates the new state
    if change in ("truncate", "append"):
        with pytest.raises(errors.InvalidModelFile):
            open_model(path)
    elif change == "delete":
        with pytest.raises(errors.ModelNotFound):
            open_model(path)
    else:
        expected = values.copy()
        if change == "replace":
            expected += 1
        else:
            expected[-1:] = np.frombuffer(b"\xff" * 4, np.float32)
        with open_model(path) as again:
            got = TensorReader(again.tensor("w")).read_patterns((slice(0, 4096),))
            assert np.array_equal(got, expected.view(np.uint32))
