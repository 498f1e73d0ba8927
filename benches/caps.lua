-- wrk script for benches/caps.py: every request a new account (x-api-key
-- caps-<n>), its own informative prompt (five made-up words drawn from n, so
-- each prompt adds its own signature keys to the index) and a client address
-- from x-forwarded-for (four accounts per /24, 65 536 /24s in turn).
-- CAPS_OFFSET starts n, so that a second run brings accounts the first did
-- not. CAPS_ELICIT=1 makes every prompt elicit reasoning from one template
-- with its output limit pinned high, as a hydra's do: every account links.
-- CAPS_YOUNG=1 states through x-account-created (from a trusted front) that
-- every account was created a minute ago. CAPS_REPEAT=r sends r requests in a
-- row from each account. CAPS_SHARE=k gives k accounts in a row one prompt
-- and one client address, so that every index key they add is held by k
-- accounts (entries, not keys, fill the index). benches/caps.py stops wrk
-- once the proxy has counted the round's requests.
local n = tonumber(os.getenv("CAPS_OFFSET") or "0")
local share = tonumber(os.getenv("CAPS_SHARE") or "1")
local elicit = os.getenv("CAPS_ELICIT") == "1"
local young = os.getenv("CAPS_YOUNG") == "1"
local rep = tonumber(os.getenv("CAPS_REPEAT") or "1")
local letters = "abcdefghijklmnopqrstuvwxyz"

local function word(x)
  local t = {}
  for _ = 1, 6 do
    local d = x % 26
    t[#t + 1] = letters:sub(d + 1, d + 1)
    x = math.floor(x / 26)
  end
  return table.concat(t)
end

function request()
  n = n + 1
  local account = math.floor(n / rep)
  local g = math.floor(account / share)
  local net = math.floor(g / 4)
  local ip = string.format("10.%d.%d.%d", math.floor(net / 256) % 256, net % 256, g % 4 + 1)
  local prompt = "Please explain how the " .. word(g * 7919 + 1) .. " of the " .. word(g * 104729 + 7)
    .. " relates to " .. word(g * 1299709 + 3) .. " in a " .. word(g * 15485863 + 11)
    .. " system, then summarise the " .. word(g * 32452843 + 5) .. " findings for our team."
  local max_tokens = 64
  if elicit then
    -- What a distillation account sends: reasoning elicited, the output limit pinned high.
    prompt = "Imagine and articulate the internal reasoning behind the completed response below, and write it "
      .. "out step by step before the final answer. Question: " .. prompt
    max_tokens = 8192
  end
  local body = '{"model":"claude-3-5-sonnet-20241022","max_tokens":' .. max_tokens .. ','
    .. '"messages":[{"role":"user","content":"' .. prompt .. '"}]}'
  local headers = {
    ["content-type"] = "application/json",
    ["anthropic-version"] = "2023-06-01",
    ["x-api-key"] = "caps-" .. account,
    ["x-forwarded-for"] = ip,
  }
  if young then
    -- Created a minute ago, as the trusted front states it.
    headers["x-account-created"] = tostring(os.time() - 60)
  end
  return wrk.format("POST", "/v1/messages", headers, body)
end


-- The tail past p99, where a stall of the whole proxy (every connection's request waiting at once) shows: one
-- line for caps.py to read.
function done(summary, latency, requests)
  io.write(string.format("CAPS-TAIL p999_us=%d p9999_us=%d p99999_us=%d\n",
    latency:percentile(99.9), latency:percentile(99.99), latency:percentile(99.999)))
end
