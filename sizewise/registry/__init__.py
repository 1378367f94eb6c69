"""Run registry (store, lineage), paired comparisons and interleaved timing."""
