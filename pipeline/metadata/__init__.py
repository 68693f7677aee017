"""The one MLMD access layer: the connection, queries, runs, versions, lineage and thresholds."""
