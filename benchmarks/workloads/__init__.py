"""The workloads of issue 6, one module each; each returns its table and raw figures."""
