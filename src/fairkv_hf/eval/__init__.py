"""LongBench v1 and RULER-style evaluation: tasks, data, prompting, metrics, methods, runner, reports."""
