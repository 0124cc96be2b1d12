"""IService children: recorders, stats, metrics."""
