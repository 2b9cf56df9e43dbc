"""Lockstep benchmarks: each measures its anchor in the same run and reports the ratio (`make bench`)."""
