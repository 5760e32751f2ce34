"""Run logs: one JSON-lines file per rank and run (header, iterations, footer), the
provenance each header carries, and the clock alignment that puts ranks on one timeline."""
