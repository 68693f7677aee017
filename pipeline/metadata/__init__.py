"""The one MLMD access layer: the connection, queries, runs, versions, lineage and thresholds; and the readers of recorded files (TFRecords, request logs)."""
