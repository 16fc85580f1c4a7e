"""Load tests and benchmarks: real sockets against servers started here, reports in
loadtests/reports/. Not part of the default test run."""
