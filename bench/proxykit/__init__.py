"""Parts of bench/proxy_overhead.py: processes, CPU accounting, load, policy, profiling."""
