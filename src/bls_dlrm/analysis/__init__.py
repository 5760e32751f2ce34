"""From run logs to verdicts: tidy tables, workloads, the one comparison of series, interval
statistics, the simulation and the claims. Nothing here starts a rank or draws a figure."""
