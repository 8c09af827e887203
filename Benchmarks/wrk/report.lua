-- wrk script: prints one machine-readable line when the run ends, for scripts/bench_run.py.
-- It defines no request() or response() function, so wrk keeps sending its prebuilt request
-- (as fast as without a script). Headers (the session cookie) come from `wrk -H`.
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
        '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
        '"max_us":%d,"mean_us":%.1f}\n',
        summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
