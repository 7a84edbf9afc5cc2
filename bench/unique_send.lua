-- wrk script: POST /asap with a fresh echo task.request envelope per request, like the
-- shared kit's send.lua, with two differences:
--   * envelope ids are unique across threads and runs (a run token from the clock and
--     the thread number), so a receiver-dedup window never answers a copy: every
--     request runs the skill (send.lua restarts its counter in every thread and run);
--   * ASAP_BENCH_TARGETS="127.0.0.1:P1,127.0.0.1:P2" spreads the threads over several
--     servers round-robin (thread i -> target i mod n): replicas behind one generator.
local recipient = os.getenv("ASAP_RECIPIENT") or "urn:asap:agent:asap-rs-echo"
local ts = os.date("!%Y-%m-%dT%H:%M:%S.000000Z")
local threads = {}
local n_threads = 0

setup = function(thread)
  local targets = os.getenv("ASAP_BENCH_TARGETS")
  if targets and targets ~= "" then
    local list = {}
    for t in string.gmatch(targets, "[^,]+") do table.insert(list, t) end
    local pick = list[(n_threads % #list) + 1]
    local host, port = string.match(pick, "^(.+):(%d+)$")
    thread.addr = wrk.lookup(host, port)[1]
  end
  n_threads = n_threads + 1
  thread:set("tid", n_threads)
  thread:set("run", os.time() % 100000)
  table.insert(threads, thread)
end

local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  local id = string.format("01KDXZ%05d%02d%013d", run or 0, tid or 0, counter)
  local body = '{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":{"id":"' .. id ..
    '","asap_version":"0.1","timestamp":"' .. ts ..
    '","sender":"urn:asap:agent:bench","recipient":"' .. recipient ..
    '","payload_type":"task.request","payload":{"conversation_id":"conv_bench","skill_id":"echo","input":{"message":"hello"}}}},"id":' .. counter .. '}'
  return wrk.format(nil, "/asap", nil, body)
end

local errors = 0
response = function(status, headers, body)
  if status ~= 200 or not string.find(body, '"result"', 1, true) then errors = errors + 1 end
end

done = function(summary, latency, requests)
  -- Answers that were not a result (an error object, a refusal) count too.
  local failed = 0
  for _, t in ipairs(threads) do failed = failed + (t:get("errors") or 0) end
  io.write(string.format('BENCH {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"socket_errors":%d,"non_2xx":%d,"not_result":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, failed))
end
