"""Framework-free parts of evaluation and run comparison: benchmark readers, summaries, run metrics, statistics."""
