"""The benchmark harness: sweeps of cells (backbone x solver x grid x steps x guidance x seeds),
one atomic record per cell named by its config hash, a results table and reports."""
