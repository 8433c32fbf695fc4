"""Token tools: the model's own tokenizer (`tokenizer.json` beside the weights, read with the
`tokenizers` library, no torch) and the rows of its embedding matrix.

Similarities are cosines between embedding rows (a text of several tokens is the mean of its
rows). Nearest neighbours scan the whole vocabulary in chunks of rows, so memory stays bounded
on any vocabulary. `token_layer_response` asks, from the weights alone, which layers' input
projections respond most (and which output projections write most) along given tokens'
embedding directions, relative to random tokens.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidRequest, SurgeryError, TooLarge
from ..store import TensorReader
from ..workspace import tensor_cache_key
from .registry import VIEW_PARAM, ToolContext, sig, tool

MAX_TOKENIZER_BYTES = 64 << 20
CHUNK_ELEMS = 1 << 22  # rows of the embedding read per step: 16 MB of float32
MAX_SAMPLED = 4096  # rows (or columns) of one matrix used by token_layer_response
_INPUT_NAMES = ("embed_tokens", "wte", "word_embeddings", "tok_embeddings", "token_embd", "embed_in",
                "shared", "embeddings.weight", "tok_embed", "embedding")
_NOT_TOKENS = ("position", "wpe", "pos_", "token_type", "rotary", "segment")


class NoTokenizer(SurgeryError):
    code = "no_tokenizer"
    http_status = 409


@dataclass
class Vocab:
    tokenizer: object  # tokenizers.Tokenizer
    size: int
    _texts: list[str] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def texts(self) -> list[str]:
        """Every token id decoded to text (special tokens included), computed once."""
        with self._lock:
            if self._texts is None:
                self._texts = self.tokenizer.decode_batch([[i] for i in range(self.size)], skip_special_tokens=False)
            return self._texts

    def text(self, token_id: int) -> str:
        return self.texts()[token_id] if 0 <= token_id < self.size else ""

    def piece(self, token_id: int) -> str | None:
        return self.tokenizer.id_to_token(token_id)

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            raise InvalidRequest(f"{text!r} tokenizes to no tokens", field="texts")
        unk = getattr(self.tokenizer.model, "unk_token", None)
        unk_id = self.tokenizer.token_to_id(unk) if unk else None
        if unk_id is not None and unk_id in ids:
            raise InvalidRequest(f"{text!r} is not in the vocabulary (it maps to the unknown token {unk!r}); "
                                 "try search_vocab, or another spelling or leading space", field="texts")
        return ids


_VOCABS: OrderedDict[tuple, Vocab] = OrderedDict()
_VOCAB_LOCK = threading.Lock()


def tokenizer_path(ctx: ToolContext) -> Path | None:
    """`tokenizer.json` in the model's own folder (not a path any argument names), if there is one."""
    folder = Path(os.path.realpath(ctx.model.folder))
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    real = Path(os.path.realpath(path))
    if not (real.is_relative_to(folder) or real in ctx.workspace.roots):
        return None  # a symlink out of the model's folder and the allowed roots
    return real


def load_vocab(ctx: ToolContext) -> Vocab:
    path = tokenizer_path(ctx)
    if path is None:
        raise NoTokenizer(
            f"no tokenizer.json beside the model in {ctx.model.folder}: the token tools need the model's "
            "tokenizer (save it with the weights, e.g. tokenizer.save_pretrained(folder))")
    st = path.stat()
    if st.st_size > MAX_TOKENIZER_BYTES:
        raise TooLarge(f"{path} is {st.st_size:,} bytes, over the {MAX_TOKENIZER_BYTES:,} read for a tokenizer",
                       file=str(path))
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _VOCAB_LOCK:
        vocab = _VOCABS.get(key)
        if vocab is not None:
            _VOCABS.move_to_end(key)
            return vocab
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise NoTokenizer("the token tools need the `tokenizers` package (pip install tokenizers)") from None
    try:
        tok = Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as e:  # the library's own parse errors: a broken file, not a bug here
        raise NoTokenizer(f"{path} could not be read as a tokenizer: {str(e)[:200]}", file=str(path)) from None
    tok.no_padding()  # a file may ask for fixed-length padding (MiniLM pads to 128) or truncation:
    tok.no_truncation()  # the token tools want exactly the text's own tokens
    vocab = Vocab(tok, tok.get_vocab_size(with_added_tokens=True))
    with _VOCAB_LOCK:
        _VOCABS[key] = vocab
        while len(_VOCABS) > 4:
            _VOCABS.popitem(last=False)
    return vocab


def embedding_candidates(ctx: ToolContext) -> list[str]:
    """2-D token-embedding-like tensors, input embeddings first, then output heads."""
    layout = ctx.layout()
    ranked = []
    for name, ref in ctx.model.tensors.items():
        meta = layout[name]
        low = name.lower()
        if len(ref.shape) != 2 or not ref.dtype.decodable or ref.dtype.kind == "complex":
            continue
        if meta.type_group not in ("embedding", "output_head") or any(s in low for s in _NOT_TOKENS):
            continue
        if meta.type_group == "output_head" and ref.shape[0] < 1000:
            continue  # a classifier head, not a vocabulary
        rank = (0 if meta.type_group == "embedding" else 1, 0 if any(s in low for s in _INPUT_NAMES) else 1,
                -ref.shape[0], name)
        ranked.append((rank, name))
    return [n for _, n in sorted(ranked)]


def embedding_reader(ctx: ToolContext, tensor: str | None, view: str, vocab: Vocab | None = None) -> TensorReader:
    if tensor is None:
        found = embedding_candidates(ctx)
        if vocab is not None:
            found = [n for n in found if ctx.model.tensors[n].shape[0] >= vocab.size] or found
        if not found:
            raise InvalidRequest("no token-embedding tensor found (a 2-D embedding or output head): name one in "
                                 "`tensor`", field="tensor")
        tensor = found[0]
    reader = ctx.reader(tensor, view)
    if len(reader.shape) != 2 or not reader.dtype.decodable or reader.dtype.kind == "complex":
        raise InvalidRequest(f"{tensor!r} (shape {list(reader.shape)}, {reader.dtype.name}) is not a 2-D real "
                             "matrix of token rows", tensor=tensor, field="tensor")
    return reader


def read_raw_rows(reader: TensorReader, ids) -> np.ndarray:
    """The rows `ids` as float64, NaN and Inf as they are."""
    rows, width = reader.shape
    out = np.empty((len(ids), width), dtype=np.float64)
    for k, i in enumerate(ids):
        if not 0 <= i < rows:
            raise InvalidRequest(f"token id {i} is outside the {rows:,} rows of {reader.ref.name!r}",
                                 tensor=reader.ref.name, field="token_ids")
        out[k] = reader.decode(reader.chunk_patterns(i * width, (i + 1) * width)).astype(np.float64)
    return out


def read_rows(reader: TensorReader, ids) -> np.ndarray:
    """The rows `ids` as float64, NaN and Inf read as 0."""
    return np.nan_to_num(read_raw_rows(reader, ids), nan=0.0, posinf=0.0, neginf=0.0)


def iter_row_blocks(reader: TensorReader, ctx: ToolContext | None = None, what: str = ""):
    """(first row, float32 block) over the whole matrix, bounded in memory."""
    rows, width = reader.shape
    step = max(1, CHUNK_ELEMS // max(width, 1))
    for start in range(0, rows, step):
        if ctx is not None:
            ctx.check_cancelled()
            if what:
                ctx.report(what, start, rows)
        end = min(rows, start + step)
        block = reader.decode(reader.chunk_patterns(start * width, end * width)).astype(np.float32)
        block = block.reshape(end - start, width)
        if not np.isfinite(block.sum()):  # rare: only then pay for a cleaning pass
            block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
        yield start, block
    if ctx is not None and what:
        ctx.report(what, rows, rows)


def row_norms(ctx: ToolContext, reader: TensorReader) -> np.ndarray:
    ref = reader.ref

    def compute():
        out = np.empty(reader.shape[0], dtype=np.float32)
        for start, block in iter_row_blocks(reader, ctx, f"row norms of {ref.name}"):
            out[start:start + len(block)] = np.sqrt(np.einsum("ij,ij->i", block, block))
        return out

    return ctx.workspace.cached(tensor_cache_key("agent-rownorms", reader), compute, lambda a: a.nbytes)


@dataclass
class Item:
    label: str
    ids: list[int]
    vector: np.ndarray  # NaN and Inf read as 0
    nonfinite: int = 0  # NaN/Inf values in its rows

    def describe(self, vocab: Vocab) -> dict:
        out = {"item": self.label, "token_ids": self.ids, "pieces": [vocab.piece(i) for i in self.ids],
               "vector": "one token row" if len(self.ids) == 1 else f"mean of {len(self.ids)} token rows",
               "norm": sig(float(np.linalg.norm(self.vector)))}
        if self.nonfinite:
            out["nonfinite_values"] = self.nonfinite
        return out

    def unusable(self) -> str | None:
        """Why this vector has no direction to compare (a warning for the LLM), or None."""
        if self.nonfinite:
            return (f"the embedding vector of {self.label} is not finite ({self.nonfinite:,} NaN/Inf value(s) in "
                    "its row): cosine similarity with it is undefined")
        if not np.any(self.vector):
            return (f"the embedding vector of {self.label} is zero (every value is 0, e.g. a zeroed row): it has "
                    "no direction, so cosine similarity with it is undefined and no token is nearer than another; "
                    "view=base shows it before staged edits")
        return None


def items_for(vocab: Vocab, reader: TensorReader, texts: list[str] | None, token_ids: list[int] | None) -> list[Item]:
    items = []
    queries = [(repr(text), vocab.encode(text)) for text in texts or []]
    queries += [(f"#{i} {vocab.text(i)!r}", [i]) for i in token_ids or []]
    for label, ids in queries:
        raw = read_raw_rows(reader, ids)
        bad = int(np.count_nonzero(~np.isfinite(raw)))
        clean = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0) if bad else raw
        items.append(Item(label, ids, clean.mean(axis=0), bad))
    return items


def _unit(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=-1, keepdims=True)
    return np.divide(m, n, out=np.zeros_like(m), where=n > 0)


def _random_ids(n_rows: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=min(k, n_rows), replace=False))


TEXTS_PARAM = {"type": "array", "maxItems": 16, "items": {"type": "string", "minLength": 1, "maxLength": 100},
               "description": "texts as the tokenizer sees them: mind the leading space (' Paris' is not 'Paris')"}
IDS_PARAM = {"type": "array", "maxItems": 16, "items": {"type": "integer", "minimum": 0}, "description": "token ids"}
EMB_PARAM = {"type": "string", "maxLength": 4096,
             "description": "the embedding matrix to use (default: the model's token embedding)"}


@tool(
    "Search the tokenizer's vocabulary. mode: contains (substring), prefix, exact, or numeric "
    "(tokens that are a number, e.g. '7', ' 42'); case-insensitive unless case_sensitive.",
    {"query": {"type": "string", "maxLength": 100, "default": ""},
     "mode": {"type": "string", "enum": ["contains", "prefix", "exact", "numeric"], "default": "contains"},
     "case_sensitive": {"type": "boolean", "default": False},
     "limit": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
)
def search_vocab(ctx: ToolContext, query: str = "", mode: str = "contains", case_sensitive: bool = False,
                 limit: int = 50) -> dict:
    vocab = load_vocab(ctx)
    if mode != "numeric" and not query:
        raise InvalidRequest(f"mode {mode} needs a query", field="query")
    q = query if case_sensitive else query.lower()
    hits = []
    for i, text in enumerate(vocab.texts()):
        t = text if case_sensitive else text.lower()
        if mode == "numeric":
            s = text.strip()
            ok = bool(s) and s.isascii() and s.isdigit() and (q in t if q else True)
        elif mode == "contains":
            ok = q in t
        elif mode == "prefix":
            ok = t.startswith(q)
        else:
            ok = t == q
        if ok:
            hits.append(i)
    return {"query": query, "mode": mode, "total_matching": len(hits), "truncated": len(hits) > limit,
            "tokens": [{"id": i, "text": vocab.text(i), "piece": vocab.piece(i)} for i in hits[:limit]]}


@tool(
    "Compare the embeddings of texts or token ids (e.g. ' Paris' and ' London'): the tokens each maps "
    "to, row norms, and the cosine similarity of every pair, with the typical cosine of random token "
    "pairs for scale.",
    {"texts": TEXTS_PARAM, "token_ids": IDS_PARAM, "tensor": EMB_PARAM, "view": VIEW_PARAM},
)
def compare_tokens(ctx: ToolContext, texts=None, token_ids=None, tensor=None, view: str = "base") -> dict:
    vocab = load_vocab(ctx)
    if len(texts or []) + len(token_ids or []) < 2:
        raise InvalidRequest("give at least two texts or token ids to compare", field="texts")
    if len(texts or []) + len(token_ids or []) > 16:
        raise InvalidRequest("compare at most 16 items at once", field="texts")
    reader = embedding_reader(ctx, tensor, view, vocab)
    items = items_for(vocab, reader, texts, token_ids)
    units = _unit(np.stack([it.vector for it in items]))
    cos = units @ units.T
    usable = [it.unusable() is None for it in items]  # a zero or non-finite vector has no cosine: null
    pairs = [{"a": items[i].label, "b": items[j].label, "cosine": sig(cos[i, j], 4) if usable[i] and usable[j] else None}
             for i in range(len(items)) for j in range(i + 1, len(items))]
    pairs.sort(key=lambda p: -(p["cosine"] if p["cosine"] is not None else -2))
    sample = _unit(read_rows(reader, _random_ids(reader.shape[0], 256).tolist()))
    sc = sample @ sample.T
    off = sc[~np.eye(len(sample), dtype=bool)]
    warnings = [w for it in items if (w := it.unusable())]
    return {
        "embedding_tensor": reader.ref.name, "view": view, "items": [it.describe(vocab) for it in items],
        **({"warnings": warnings} if warnings else {}),
        "pairs": pairs[:120],
        "random_pairs_cosine": {"mean": sig(off.mean(), 3), "std": sig(off.std(), 3), "p99": sig(np.percentile(off, 99), 3)},
    }


@tool(
    "Nearest tokens to a text or token id by cosine similarity of embedding rows, over the whole "
    "vocabulary (the query's own tokens left out).",
    {"text": {"type": "string", "minLength": 1, "maxLength": 100}, "token_id": {"type": "integer", "minimum": 0},
     "k": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10}, "tensor": EMB_PARAM, "view": VIEW_PARAM},
)
def nearest_tokens(ctx: ToolContext, text=None, token_id=None, k: int = 10, tensor=None, view: str = "base") -> dict:
    vocab = load_vocab(ctx)
    if (text is None) == (token_id is None):
        raise InvalidRequest("give exactly one of text or token_id", field="text")
    reader = embedding_reader(ctx, tensor, view, vocab)
    (item,) = items_for(vocab, reader, [text] if text is not None else None,
                        [token_id] if token_id is not None else None)
    if warning := item.unusable():
        return {"embedding_tensor": reader.ref.name, "view": view, "query": item.describe(vocab),
                "neighbours": [], "warning": warning}
    q = _unit(item.vector[None, :])[0].astype(np.float32)
    norms = row_norms(ctx, reader)
    best_ids = np.zeros(0, dtype=np.int64)
    best_cos = np.zeros(0, dtype=np.float32)
    exclude = set(item.ids)
    for start, block in iter_row_blocks(reader, ctx, f"nearest tokens in {reader.ref.name}"):
        n = norms[start:start + len(block)]
        c = np.divide(block @ q, n, out=np.full(len(block), -np.inf, dtype=np.float32), where=n > 0)
        for i in exclude:
            if start <= i < start + len(block):
                c[i - start] = -np.inf
        take = min(k, len(c))
        idx = np.argpartition(-c, take - 1)[:take]
        best_ids = np.concatenate([best_ids, idx + start])
        best_cos = np.concatenate([best_cos, c[idx]])
        keep = np.argsort(-best_cos, kind="stable")[:k]
        best_ids, best_cos = best_ids[keep], best_cos[keep]
    return {
        "embedding_tensor": reader.ref.name, "view": view, "query": item.describe(vocab),
        "neighbours": [{"id": int(i), "text": vocab.text(int(i)), "cosine": sig(c, 4)}
                       for i, c in zip(best_ids, best_cos) if np.isfinite(c)],
    }


READ_GROUPS = ("attention_qkv", "mlp_gateup")  # matrices that read the residual stream: [out, hidden]
WRITE_GROUPS = ("attention_out", "mlp_down")  # matrices that write it: [hidden, in]


def _gains(ctx: ToolContext, reader: TensorReader, x: np.ndarray, writes: bool) -> tuple[np.ndarray, bool]:
    """||W u|| (reads) or ||W^T u|| (writes) for every column u of x, from at most MAX_SAMPLED
    rows (reads) or input columns (writes) of W, scaled to estimate the full norm."""
    rows, cols = reader.shape
    if not writes:
        acc = np.zeros(x.shape[1])
        if rows <= MAX_SAMPLED:
            for _, block in iter_row_blocks(reader, ctx):
                acc += np.sum((block @ x) ** 2, axis=0)
            return np.sqrt(acc), False
        pick = np.unique(np.linspace(0, rows - 1, MAX_SAMPLED).round().astype(np.int64))
        for lo in range(0, len(pick), 512):
            ctx.check_cancelled()
            r = read_rows(reader, pick[lo:lo + 512].tolist()).astype(np.float32)
            acc += np.sum((r @ x) ** 2, axis=0)
        return np.sqrt(acc * rows / len(pick)), True
    sampled = cols > MAX_SAMPLED
    pick = np.unique(np.linspace(0, cols - 1, MAX_SAMPLED).round().astype(np.int64)) if sampled else None
    proj = np.zeros((MAX_SAMPLED if sampled else cols, x.shape[1]), dtype=np.float32)
    for start, block in iter_row_blocks(reader, ctx):
        proj += (block[:, pick] if sampled else block).T @ x[start:start + len(block)]
    scale = cols / proj.shape[0]
    return np.sqrt(np.sum(proj.astype(np.float64) ** 2, axis=0) * scale), sampled


@tool(
    "Which layers respond most to given tokens, from the weights alone: for each layer's input "
    "projections (q/k/v, gate/up) the gain ||W u|| along each token's unit embedding direction u, "
    "and for its output projections (o_proj, down_proj) how strongly they can write along u "
    "(||W^T u||), each divided by the same for random vocabulary tokens (1.0 = typical). A "
    "first-order, weights-only estimate: it ignores norms, attention patterns and nonlinearities.",
    {"texts": {**TEXTS_PARAM, "maxItems": 64}, "token_ids": {**IDS_PARAM, "maxItems": 64},
     "baseline_tokens": {"type": "integer", "minimum": 16, "maximum": 1024, "default": 256},
     "top": {"type": "integer", "minimum": 1, "maximum": 50, "default": 8}, "tensor": EMB_PARAM, "view": VIEW_PARAM},
)
def token_layer_response(ctx: ToolContext, texts=None, token_ids=None, baseline_tokens: int = 256, top: int = 8,
                         tensor=None, view: str = "base") -> dict:
    vocab = load_vocab(ctx)
    if not texts and not token_ids:
        raise InvalidRequest("give the texts or token ids whose directions to follow", field="texts")
    reader = embedding_reader(ctx, tensor, view, vocab)
    hidden = reader.shape[1]
    items = items_for(vocab, reader, texts, token_ids)
    base = _unit(read_rows(reader, _random_ids(reader.shape[0], baseline_tokens, seed=1).tolist()))
    base = base[np.linalg.norm(base, axis=1) > 0]
    m = len(items)
    x = np.concatenate([_unit(np.stack([it.vector for it in items])), base]).T.astype(np.float32)  # hidden x (m+b)
    layout = ctx.layout()
    targets = []
    for name, ref in ctx.model.tensors.items():
        meta = layout[name]
        if meta.layer_index < 0 or "*" not in meta.specific_type_key or len(ref.shape) != 2:
            continue
        if not ref.dtype.decodable or ref.dtype.kind == "complex":
            continue
        if meta.type_group in READ_GROUPS and ref.shape[1] == hidden:
            targets.append((name, meta, False))
        elif meta.type_group in WRITE_GROUPS and ref.shape[0] == hidden:
            targets.append((name, meta, True))
    if not targets:
        raise InvalidRequest(f"no layer matrices read or write vectors of width {hidden} (the embedding's)",
                             field="tensor")
    total = sum(ctx.model.tensors[n].nbytes for n, _, _ in targets)
    done = 0
    per_layer: dict[tuple, dict] = {}
    sampled_any = False
    for name, meta, writes in targets:
        ctx.check_cancelled()
        ctx.report("token response per layer", done, total)
        g, sampled = _gains(ctx, ctx.reader(name, view), x, writes)
        sampled_any |= sampled
        base_mean = float(g[m:].mean()) if g[m:].size else 0.0
        score = float(g[:m].mean()) / base_mean if base_mean > 0 else None
        row = per_layer.setdefault((meta.block or "", meta.layer_index), {"reads": {}, "writes": {}})
        role = meta.specific_type_key.split("*.", 1)[-1]
        row["writes" if writes else "reads"][role] = score
        done += ctx.model.tensors[name].nbytes
    ctx.report("token response per layer", total, total)
    table = []
    for (block, layer), row in sorted(per_layer.items()):
        reads = [v for v in row["reads"].values() if v is not None]
        writes_ = [v for v in row["writes"].values() if v is not None]
        both = reads + writes_
        entry = {"layer": layer, "score": sig(np.mean(both), 4) if both else None,
                 "reads_score": sig(np.mean(reads), 4) if reads else None,
                 "writes_score": sig(np.mean(writes_), 4) if writes_ else None,
                 "by_tensor": {k: sig(v, 4) for k, v in {**row["reads"], **row["writes"]}.items()}}
        if block:
            entry["block"] = block
        table.append(entry)
    ranked = sorted((t for t in table if t["score"] is not None), key=lambda t: -t["score"])
    return {
        "embedding_tensor": reader.ref.name, "view": view, "items": [it.describe(vocab) for it in items],
        "baseline_tokens": int(base.shape[0]),
        "top_layers": [{"layer": t["layer"], "score": t["score"], "reads_score": t["reads_score"],
                        "writes_score": t["writes_score"], **({"block": t["block"]} if "block" in t else {})}
                       for t in ranked[:top]],
        "bottom_layers": [{"layer": t["layer"], "score": t["score"]} for t in ranked[-3:]] if len(ranked) > top else [],
        "per_layer": table[:200],
        "sampled": sampled_any,
        "method": "score = mean gain along the tokens' unit embedding directions / mean gain along random "
                  "tokens' (1.0 = typical); reads: ||W u|| of q/k/v/gate/up; writes: ||W^T u|| of o/down",
    }
