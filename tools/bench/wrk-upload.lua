-- wrk script: POST a 1 MiB body on every request, then the same JSON summary as wrk-report.lua.
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
dofile(os.getenv("BENCH_LUA_DIR") .. "/wrk-report.lua")
