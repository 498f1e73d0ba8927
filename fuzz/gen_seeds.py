#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (the corpus folder is
gitignored, so run this once before `cargo fuzz run`).

Sources: /work/shared/testdata/ja4/*.jsonl (`record_hex`) for client_hello,
/work/shared/bench/fixtures/{stream.sse,messages.json} for usage_meter and
request_inspect, the repository's shipped configs (config/*.toml,
config/examples, config/scenarios) for config_load, the scenarios' prompt
templates and phrase lists (config/signals) for prompt_signature, the
documented record fields (docs/traffic-record.md) for traffic_record, and
small hand-made inputs for the other targets. Inputs of the chunked targets
start with a chunk plan: byte n (n % 8 sizes follow; 0 = one chunk), see
fuzz_targets/common/mod.rs; usage_meter inputs start with a mode byte first.
"""
import hashlib
import json
import os
import struct
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
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


def front_headers():
    seeds = [
        "t13d1516h2_8daaf6152771_e5627efa2ab1",
        "q13d0312h3_55b375c5d22e_06cda9e17597",
        "d12i051000_000000000000_000000000000",
        "t13d1516h2_8DAAF6152771_E5627EFA2AB1",
        "t13d1516h2_8daaf6152771_e5627efa2ab",
        "1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p",
        "1:65536;4:131072;5:16384|12517377|3:0:0:201,5:0:0:101,7:0:0:1|m,p,a,s",
        "1:65536,2:0,4:6291456,6:262144|15663105|0|masp",
        "|0|0|",
        "198.51.100.10:46532",
        "2001:db8::1:46532",
        "[2001:db8::1]:443",
        "198.51.100.10",
        "2001:db8::1",
        "16509",
        "AS13335",
    ]
    for s in seeds:
        write("front_headers", s.encode())
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


# Request bodies of each API, for request_inspect (mode & 3 = kind).
REQUESTS = [
    (0, b'{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Say hello in five words."}]}'),
    (0, b'{"model":"claude","max_tokens":1024,"stream":true,"thinking":{"type":"enabled",'
        b'"budget_tokens":2048},"system":[{"type":"text","text":"be brief","cache_control":{"type":"ephemeral"}}],'
        b'"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image","source":{}}]},'
        b'{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{"a":1}}]},'
        b'{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"42"}]}]}]}'),
    (0, b'{"messages":[{"role":"user","content":"late system"}],"system":"first","max_tokens":1e30}'),
    (0, b'{"model":"m","max_tokens":-1,"thinking":{"type":"disabled"},"messages":"x"}'),
    (1, b'{"model":"gpt","max_completion_tokens":"50","reasoning_effort":"high",'
        b'"messages":[{"role":"user","content":"hello"}]}'),
    (1, b'{"model":"gpt-4o","max_tokens":4096,"max_completion_tokens":null,"stream":true,'
        b'"messages":[{"role":"system","content":"sys"},{"role":"user","content":[{"type":"text","text":"caf\\u00e9"}]}]}'),
    (2, b'{"model":"o","input":[{"role":"user","content":[{"type":"input_text","text":"x"}]}],'
        b'"instructions":"y","reasoning":{"effort":"low"},"max_output_tokens":7}'),
    (2, b'{"model":"o","input":[{"type":"function_call_output","call_id":"c","output":"result"},'
        b'{"type":"function_call","arguments":"{}"}],"max_output_tokens":4294967296}'),
    (3, b'{"model":"x","max_tokens":10,"max_output_tokens":20,"system":"s","input":"i","messages":"m",'
        b'"thinking":{"budget_tokens":5},"reasoning":{"effort":"high"}}'),
    (3, b'[1,2,3]'),
    (0, b'{"model":"a","model":"b","messages":"one","messages":"two"}'),
    (0, b'{"a":' * 130 + b'1' + b'}' * 130),
    (1, b'{"messages":[{"content":"\\ud800"}]}'),
]
# Clamps: 16 (the README's degrade example), 0 (clamped to 1), 65535.
CAPS = [b"\x10\x00", b"\x00\x00", b"\xff\xff"]


def request_inspect():
    bodies = list(REQUESTS)
    with open(os.path.join(SHARED, "bench", "fixtures", "messages.json"), "rb") as f:
        bodies.append((0, f.read()))
    n = 0
    for mode, body in bodies:
        for cap in CAPS:
            write("request_inspect", bytes([mode]) + cap + body)
            n += 1
        write("request_inspect", bytes([mode | 4]) + b"\0\0" + body)  # cap u32::MAX
        n += 1
    return n


def scenario_templates():
    out = []
    d = os.path.join(REPO, "config", "scenarios")
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            sc = tomllib.load(f)
        for p in sc.get("population", []):
            for t in p.get("templates", []):
                out.append(t.replace("{}", "the quick brown fox"))
    return out


def prompt_signature():
    texts = scenario_templates()
    sig = os.path.join(REPO, "config", "signals")
    for name in sorted(os.listdir(sig)):
        with open(os.path.join(sig, name), encoding="utf-8") as f:
            phrases = [l.strip() for l in f if l.strip() and not l.startswith("#")]
        texts.append("\n".join(phrases[:40]))
    texts += [
        "Imagine and articulate the internal reasoning behind the completed response below.\n"
        "Question: What is 2 + 2?\nAnswer: 4\nExplain step-by-step, don't skip.",
        'You are Alice, a tutor in Paris. Use "quoted text" and \u201ccurly quotes\u201d, '
        "\u00abguillemets\u00bb, \u300cCJK\u300d, `inline code`, https://example.com/x, www.example.org, "
        "gpt4 snake_case os.path a@b.c x=1 camelCase 3.14 1,000 2024-01-01 10k 1st.",
        "```python\nprint('fenced')\n```\nthen prose after the fence, and an unclosed ``` fence",
        "\u8bf7\u89e3\u91ca\u4e00\u4e0b\u8fd9\u4e2a\u95ee\u9898\u7684\u63a8\u7406\u8fc7\u7a0b\u3002"
        "\u3053\u308c\u306f\u30c6\u30b9\u30c8\u3067\u3059\u3002",
        "\u0130stanbul \u00c9COLE Stra\u00dfe \u1e9e \u0391\u0392\u0393 " * 8,
        "word " * 300 + "\n" + "tail line of the prompt with enough words to fill a region " * 3,
        "",
        "hi",
    ]
    n = 0
    for i, t in enumerate(texts):
        data = t.encode("utf-8")
        split = len(data) // 2 if i % 2 else len(data)
        key = (0x6469_7374_696C_6C21 + i).to_bytes(8, "little")
        write("prompt_signature", struct.pack("<H", min(split, 0xFFFF)) + key + data)
        n += 1
    return n


def record(**fields):
    base = {"v": 2, "t_ms": 1767225600000, "account": "00000000000000aa"}
    base.update(fields)
    return json.dumps(base, separators=(",", ":"))


def traffic_record():
    keys = ["%016x" % (0x1111111111111111 * (i % 15 + 1)) for i in range(16)]
    full = record(
        request_id="req-1", anonymous=False, ja4="t13d1516h2_8daaf6152771_e5627efa2ab1",
        http="0123456789abcdef0123456789abcdef", h2="1:65536;2:0;4:6291456|15663105|0|m,a,s,p",
        ip_prefix="203.0.113.0/24", asn=64500, model="claude-sonnet-4-5", input_tokens=1200,
        max_output_tokens=64000, thinking_budget=32000, reasoning_high=True, prompt_keys=keys,
        fill_key="0123456789abcdef", phrase_lists=["elicitation", "rubric"], inconsistent=True,
        output_tokens=5000, decision="throttle", population="hydra", attack=True,
    )
    lines = [
        '{"v":1,"t_ms":1700000000000,"account":"00000000000000aa","input_tokens":10,"output_tokens":5,"decision":"allow"}',
        full,
        record(ip_prefix="2001:db8::/48", anonymous=True, output_tokens=18446744073709551615,
               input_tokens=18446744073709551615, t_ms=18446744073709551615),
        record(prompt_keys=keys[:8]),
        record(account="not-hex"),
        record(v=3, sources={"ja4": "front", "http": "observed", "address": "front", "asn": "front"}),
        record(v=4),
        record(unknown_field=1),
        record(fill_key="zz", ip_prefix="300.1.1.1/8"),
    ]
    n = 0
    for i in range(len(lines)):
        write("traffic_record", (lines[i] + "\n").encode())
        n += 1
    # A short record file: several accounts over a minute, one account
    # repeating, then a malformed line in the middle.
    day = []
    for i in range(40):
        day.append(record(t_ms=1767225600000 + i * 1500, account="%016x" % (0xa0 + i % 7),
                          prompt_keys=keys if i % 3 else [], max_output_tokens=64000,
                          output_tokens=4000, population="p%d" % (i % 2), attack=bool(i % 2)))
    day.insert(20, "{not json")
    write("traffic_record", ("\n".join(day) + "\n").encode())
    return n + 1


def config_load():
    n = 0
    for rel in ("config/distill-guard.toml", "config/examples/local-mock.toml"):
        with open(os.path.join(REPO, rel), "rb") as f:
            write("config_load", b"\x00" + f.read())
            n += 1
    write("config_load", b"\x00[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n")
    write("config_load", b"\x00[[listener]]\naddress = \"nope\"\n[upstream]\nurl = \"ftp://x\"\nbogus = 1\n")
    n += 2
    d = os.path.join(REPO, "config", "scenarios")
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            write("config_load", b"\x01" + f.read())
            n += 1
    return n


if __name__ == "__main__":
    counts = {
        "client_hello": client_hello(),
        "h2_tap": h2_tap(),
        "h1_tap": h1_tap(),
        "proxy_protocol": proxy_protocol(),
        "usage_meter": usage_meter(),
        "request_inspect": request_inspect(),
        "prompt_signature": prompt_signature(),
        "traffic_record": traffic_record(),
        "config_load": config_load(),
        "front_headers": front_headers(),
    }
    for k, v in counts.items():
        print(f"{k}: {v} seeds written")
    sys.exit(0)
