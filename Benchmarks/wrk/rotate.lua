-- wrk script for the `write` scenario: each request carries the next cookie of a list of primed sessions,
-- round-robin. With more sessions than connections (the harness primes 4 per connection), a session comes
-- back only after hundreds of other requests, so two requests on one session are almost never in flight
-- together and the compare-and-set save does not conflict.
--   wrk ... -s rotate.lua URL -- COOKIE_FILE      (one `connect.sid=...` cookie per line)
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")                     -- the done() that prints BENCH_JSON

local requests, count, next_index = {}, 0, 0

function init(args)
    assert(args[1], "rotate.lua needs a cookie file: wrk ... -s rotate.lua URL -- FILE")
    for line in io.lines(args[1]) do
        if line ~= "" then
            count = count + 1
            -- Built once here, so request() only picks a prebuilt string.
            requests[count] = wrk.format(nil, nil, { ["Cookie"] = line })
        end
    end
    assert(count > 0, "no cookies in " .. args[1])
end

function request()
    next_index = next_index % count + 1
    return requests[next_index]
end
