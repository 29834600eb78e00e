#!/usr/bin/env python3
"""fuzz/make_seeds.py: write the fuzzers' seed files (small valid safetensors and GGUF files,
independent of Tide's writers). Run from the repository root."""
import json, struct, os

def st(path, tensors, meta=None):
    hdr, data = {}, b""
    if meta: hdr["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)

d = "fuzz/seeds/safetensors"
os.makedirs(d, exist_ok=True)
st(f"{d}/small.safetensors", [
    ("a.f32", "F32", [2, 3], struct.pack("<6f", 1, -2, 3.5, 0, 1e-3, 7)),
    ("b.bf16", "BF16", [4], struct.pack("<4H", 0x3f80, 0xc000, 0x4040, 0)),
    ("c.f16", "F16", [1, 2], struct.pack("<2H", 0x3c00, 0xbc00)),
    ("d.f8", "F8_E4M3", [2, 2], bytes([0x38, 0xb8, 0x40, 0x7e])),
    ("e.i32", "I32", [3], struct.pack("<3i", 1, -1, 7)),
    ("f.i64", "I64", [1], struct.pack("<q", -5)),
    ("g.u8", "U8", [2], b"\x01\xff"),
    ("h.scalar", "F64", [], struct.pack("<d", 2.5)),
], {"format": "pt", "note": "seed \u00e9"})
st(f"{d}/empty.safetensors", [], {"format": "pt"})
st(f"{d}/zero.safetensors", [("z", "F32", [0, 4], b""), ("w", "I8", [2, 1, 1, 1], b"\x01\x02")])

def s(x): b = x.encode(); return struct.pack("<Q", len(b)) + b
def kv(key, t, payload): return s(key) + struct.pack("<I", t) + payload

def gguf(path, kvs, tensors, align=32):
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    off, blobs = 0, []
    for name, dims, gtype, raw in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", x) for x in dims)
        out += struct.pack("<IQ", gtype, off)
        blobs.append((off, raw)); off += len(raw); off += -off % align
    out += b"\0" * (-len(out) % align)
    base = len(out)
    for o, raw in blobs:
        out += b"\0" * (base + o - len(out)) + raw
    out += b"\0" * (-len(out) % align)
    open(path, "wb").write(out)

d = "fuzz/seeds/gguf"
os.makedirs(d, exist_ok=True)
kvs = [
    kv("general.architecture", 8, s("llama")),
    kv("u8", 0, struct.pack("<B", 200)), kv("i8", 1, struct.pack("<b", -100)),
    kv("u16", 2, struct.pack("<H", 60000)), kv("i16", 3, struct.pack("<h", -30000)),
    kv("u32", 4, struct.pack("<I", 4000000000)), kv("i32", 5, struct.pack("<i", -2000000000)),
    kv("f32", 6, struct.pack("<f", 0.5)), kv("bool", 7, b"\x01"),
    kv("u64", 10, struct.pack("<Q", 2**63 + 5)), kv("i64", 11, struct.pack("<q", -2**62)),
    kv("f64", 12, struct.pack("<d", 1e300)),
    kv("arr.i32", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", 1, -2, 3)),
    kv("arr.str", 9, struct.pack("<IQ", 8, 2) + s("a") + s("\u00fcber")),
    kv("arr.f32", 9, struct.pack("<IQ", 6, 2) + struct.pack("<2f", 1.5, -2)),
]
q8 = (struct.pack("<e", 0.5) + bytes(range(32)))
gguf(f"{d}/small.gguf", kvs, [
    ("t.f32", [3, 2], 0, struct.pack("<6f", 1, 2, 3, 4, 5, 6)),
    ("t.f16", [2], 1, struct.pack("<2e", 1.0, -1.0)),
    ("t.bf16", [2], 30, struct.pack("<2H", 0x3f80, 0x4000)),
    ("t.q8_0", [32, 2], 8, q8 * 2),
    ("t.i32", [1], 26, struct.pack("<i", 9)),
])
gguf(f"{d}/align8.gguf", [kv("general.alignment", 4, struct.pack("<I", 8))],
     [("a", [4], 0, struct.pack("<4f", 1, 2, 3, 4)), ("b", [1], 24, b"\x05")], align=8)
gguf(f"{d}/empty.gguf", [], [])
