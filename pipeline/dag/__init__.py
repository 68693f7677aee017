"""The TFX DAG: create_pipeline(config, target), mlpipe's custom components and the eval spec."""
