#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (the corpus folder is
gitignored, so run this once before `cargo fuzz run`).

Sources: /work/shared/testdata/ja4/*.jsonl (`record_hex`) for client_hello,
/work/shared/bench/fixtures/{stream.sse,messages.json} for usage_meter, and
small hand-made inputs for the other targets. Inputs of the chunked targets
start with a chunk plan: byte n (n % 8 sizes follow; 0 = one chunk), see
fuzz_targets/common/mod.rs; usage_meter inputs start with a mode byte first.
"""
import hashlib
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("DG_SHARED", os.path.join(HERE, "..", "..", "shared"))
if not os.path.isdir(SHARED):
    SHARED = "/work/shared"
CORPUS = os.path.join(HERE, "corpus")

# Chunk plans: whole input, 1-byte chunks, mixed sizes.
PLANS = [b"\x00", b"\x01\x00", b"\x03\x06\x10\xc7"]


def write(target, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def client_hello():
    seen = 0
    for fname in ("client_hellos.jsonl", "client_hellos_live.jsonl"):
        path = os.path.join(SHARED, "testdata", "ja4", fname)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    rec = bytes.fromhex(json.loads(line)["record_hex"])
                    write("client_hello", rec)
                    seen += 1
                    if seen <= 4:
                        # The same handshake message split over several
                        # records (exercises reassembly): 3-byte, 97-byte,
                        # then the rest.
                        msg = rec[5:]
                        cuts = [0, 3, 100, len(msg)]
                        multi = b"".join(
                            rec[:3] + struct.pack(">H", b - a) + msg[a:b]
                            for a, b in zip(cuts, cuts[1:])
                        )
                        write("client_hello", multi)
                        seen += 1
    return seen


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def settings(pairs):
    return frame(4, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def h2_tap():
    # :method GET, :authority www.example.com (literal, incremental indexing),
    # :scheme https, :path /, user-agent literal without indexing, then a
    # dynamic-table reference.
    block = b"\x3f\xe1\x1f" + b"\x82" + b"\x41\x0fwww.example.com" + b"\x87\x84"
    block += b"\x0f\x2b\x04curl" + b"\x40\x0acustom-key\x0ccustom-value" + b"\xbe"
    prio = struct.pack(">I", 0x80000000) + b"\xff"
    chrome = PREFACE + settings([(1, 65536), (2, 0), (4, 6291456), (6, 262144)])
    chrome += frame(8, 0, 0, struct.pack(">I", 15663105))
    chrome += frame(1, 0x4 | 0x1 | 0x20, 1, prio + block)
    chrome += frame(4, 1, 0, b"") + frame(0, 1, 3, b"data")
    firefox = PREFACE + settings([(1, 65536), (4, 131072), (5, 16384)])
    firefox += frame(8, 0, 0, struct.pack(">I", 12517377))
    for sid, dep, w in ((3, 0, 200), (5, 0, 100), (7, 0, 0), (9, 7, 0), (11, 3, 0)):
        firefox += frame(2, 0, sid, struct.pack(">I", dep) + bytes([w]))
    firefox += frame(1, 0x1, 13, block[:10])  # no END_HEADERS: CONTINUATION follows
    firefox += frame(9, 0x4, 13, block[10:])
    padded = PREFACE + settings([(3, 100)]) + frame(1, 0x4 | 0x8, 1, b"\x03" + block + b"\0\0\0")
    n = 0
    for s in (chrome, firefox, padded, PREFACE, PREFACE + settings([])):
        for plan in PLANS:
            write("h2_tap", plan + s)
            n += 1
    return n


def h1_tap():
    heads = [
        b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\n"
        b"Content-Length: 11\r\nCookie: a=b\r\nReferer: x\r\nAccept-Language: en\r\n\r\n{\"a\":\"b\"}\r\n"
        b"GET /again HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nGET / HTTP/1.0\r\n\r\n",
        b"\r\nGET /x HTTP/1.0\nhost: h\n\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        # Near and over the proxy's 16 KiB head limit.
        b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + b"a" * 16000 + b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + b"a" * 17000 + b"\r\n\r\n",
    ]
    n = 0
    for h in heads:
        for plan in PLANS:
            write("h1_tap", plan + h)
            n += 1
    return n


def proxy_protocol():
    sig = b"\r\n\r\n\0\r\nQUIT\n"
    seeds = [
        b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 51234 443\r\n",
        b"PROXY UNKNOWN\r\n",
        sig + bytes([0x21, 0x11, 0x00, 12, 203, 0, 113, 9, 10, 0, 0, 1, 0x1F, 0x90, 0x01, 0xBB]) + b"\x16\x03\x01",
        sig + bytes([0x21, 0x21, 0x00, 36]) + bytes(range(16)) + bytes(range(16, 32)) + b"\x1f\x90\x01\xbb",
        sig + bytes([0x20, 0x00, 0x00, 0x00]),
    ]
    for s in seeds:
        write("proxy_protocol", s)
    return len(seeds)


def usage_meter():
    fx = os.path.join(SHARED, "bench", "fixtures")
    bodies = []  # (mode, body): mode & 3 = kind, mode & 4 = streaming
    with open(os.path.join(fx, "stream.sse"), "rb") as f:
        bodies.append((4 | 0, f.read()))
    with open(os.path.join(fx, "messages.json"), "rb") as f:
        bodies.append((0, f.read()))
    bodies.append((4 | 1, b'data: {"choices":[{"delta":{"content":"Hi \\u00e9"}}],"usage":null}\n\n'
                          b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3}}\r\n\r\n'
                          b"data: [DONE]\r\n\r\n"))
    bodies.append((4 | 2, b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hello"}\n\n'
                          b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":'
                          b'{"input_tokens":5,"output_tokens":2}}}\n\n'))
    bodies.append((1, b'{"id":"x","choices":[{"message":{"content":"{\\"usage\\":1}"}}],'
                      b'"usage":{"prompt_tokens":10,"completion_tokens":20}}'))
    # SSE data lines longer than MAX_LINE (64 KiB): the overflow path.
    big_text = b"lorem ipsum " * 6000
    bodies.append((4 | 0, b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"'
                          + big_text + b'"}}\n\ndata: {"type":"message_delta","usage":{"output_tokens":9}}\n\n'))
    bodies.append((4 | 2, b'data: {"type":"response.completed","response":{"output":[{"text":"'
                          + big_text + b'"}],"usage":{"input_tokens":5,"output_tokens":20000}}}\n\n'))
    # Request bodies, for inspect / rewrite_degrade.
    bodies.append((0, b'{"model":"claude","max_tokens":1024,"stream":true,"thinking":{"type":"enabled",'
                      b'"budget_tokens":2048},"system":"be brief","messages":[{"role":"user",'
                      b'"content":[{"type":"text","text":"hi"}]}]}'))
    bodies.append((1, b'{"model":"gpt","max_completion_tokens":"50","reasoning_effort":"high",'
                      b'"messages":[{"role":"user","content":"hello"}]}'))
    bodies.append((2, b'{"model":"o","input":[{"role":"user","content":[{"type":"input_text","text":"x"}]}],'
                      b'"instructions":"y","reasoning":{"effort":"low"},"max_output_tokens":7}'))
    n = 0
    for mode, body in bodies:
        for plan in PLANS:
            write("usage_meter", bytes([mode]) + plan + body)
            n += 1
    return n


if __name__ == "__main__":
    counts = {
        "client_hello": client_hello(),
        "h2_tap": h2_tap(),
        "h1_tap": h1_tap(),
        "proxy_protocol": proxy_protocol(),
        "usage_meter": usage_meter(),
    }
    for k, v in counts.items():
        print(f"{k}: {v} seeds written")
    sys.exit(0)
