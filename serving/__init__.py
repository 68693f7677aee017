"""mlpipe's model server: TF Serving's REST and gRPC contract over the Pusher's directory.

Entry points: `serving.cli` (the `serve` command), `serving.server.ModelServer` (in-process use),
`serving.request_log.read_logs` (what the model saw). Imports no TFX orchestration.
"""
