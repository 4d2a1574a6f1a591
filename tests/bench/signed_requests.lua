-- wrk script: replay pre-signed webhook requests, each once per cycle, and print the figures as JSON.
-- Usage: wrk -t2 -c8 -d5s -s tests/bench/signed_requests.lua http://127.0.0.1:PORT -- requests.tsv 2
-- (the last argument is wrk's thread count).
-- requests.tsv: one request per line, tab-separated: path, content type, signature header, signature,
-- body (form-encoded or compact JSON, so no tab or newline inside). Signing (HMAC) is done beforehand in
-- Python: wrk's Lua has no HMAC, and signing here would measure the generator, not the server.
-- With several wrk threads, thread i of n replays lines i, i+n, i+2n...: ids stay distinct across threads.

local counter = 0

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
end

local requests = {}
local position = 0

function init(args)
  local file = assert(io.open(args[1], "r"))
  local n = 0
  local mine = index or 0
  local stride = tonumber(args[2]) or 1
  for line in file:lines() do
    if n % stride == mine then
      local path, ctype, header, signature, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = { ["Content-Type"] = ctype }
      headers[header] = signature
      requests[#requests + 1] = wrk.format("POST", path, headers, body)
    end
    n = n + 1
  end
  file:close()
end

function request()
  position = position % #requests + 1
  return requests[position]
end

function done(summary, latency, requests_)
  local non2xx = summary.errors.status
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"non2xx": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    non2xx, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
end
