-- wrk script of bench/run.py: POST an AdmissionReview with a fresh uid on every request, and check every answer.
--
--   wrk -t1 -cN -dSs --latency -s bench/post.lua https://127.0.0.1:PORT/mutate -- BODY_FILE patch|nopatch
--
-- BODY_FILE holds the review with the placeholder uid below; each request replaces it with a new uid of the
-- same length (so Content-Length stays right). An answer counts as a failure unless it is a 200 that echoes a
-- uid this thread has sent and not yet seen answered, and (with "patch") carries a JSON Patch.
-- done() prints one line "BENCH {json}" for bench/run.py to read.

local PLACEHOLDER = "00000000-0000-4000-8000-000000000000"

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
  table.insert(threads, thread)
end

local request_prefix, request_suffix, expect_patch
local pending = {}
local sent = 0
failures = 0
first_failure = ""

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  expect_patch = args[2] == "patch"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  -- Build the request once; only the uid changes from one request to the next.
  local template = wrk.format(nil, nil, nil, body)
  local first, last = template:find(PLACEHOLDER, 1, true)
  assert(first, "the body file holds no placeholder uid")
  request_prefix = template:sub(1, first - 1)
  request_suffix = template:sub(last + 1)
end

function request()
  sent = sent + 1
  local uid = string.format("%08x-0000-4000-8000-%012x", thread_id, sent)
  pending[uid] = true
  return request_prefix .. uid .. request_suffix
end

local function fail(why)
  failures = failures + 1
  if first_failure == "" then
    first_failure = why
  end
end

function response(status, headers, body)
  local uid = body:match('"uid":"([^"]+)"')
  if status ~= 200 then
    fail("status " .. status)
  elseif not uid or not pending[uid] then
    fail("uid not echoed: " .. body:sub(1, 200))
  elseif expect_patch and not body:find('"patch":"', 1, true) then
    fail("no patch: " .. body:sub(1, 200))
  end
  if uid then
    pending[uid] = nil
  end
end

function done(summary, latency, requests)
  local total_failures = 0
  local first = ""
  for _, thread in ipairs(threads) do
    total_failures = total_failures + thread:get("failures")
    if first == "" then
      first = thread:get("first_failure")
    end
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_s":%.6f,"p50_ms":%.4f,"p99_ms":%.4f,"failures":%d,' ..
    '"socket_errors":%d,"first_failure":"%s"}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    total_failures, errors.connect + errors.read + errors.write + errors.timeout,
    (first:gsub('[%c"\\]', "?"))))
end
