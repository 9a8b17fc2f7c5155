"""What the benchmarks and the tests share, apart from the product: the product never imports it.

``testing``: a fast engine config, a free loopback port, moto's S3 server, the fault proxy;
``results``: the provenance every result file carries (commit, command line, relative paths).
"""
