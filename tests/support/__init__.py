"""Helpers shared by the tests; no test module imports another.

live.py (a `tickcast run` process, an independent producer), readers.py (every topic read: read_all by an
independent client, read_committed from txlog.py), cli.py (the command line in a child process),
faults.py (the fault tests' reference and checks), txlog.py (read_committed from the log's markers),
proxy.py (a TCP proxy that cuts or stalls the broker), s3.py (a real S3 endpoint), strategies.py
(hypothesis tick streams and batch cuts), bundles.py and data.py (small shared helpers).
"""
