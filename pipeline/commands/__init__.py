"""One module per `mlpipe` command group; each has `add_parser(subparsers)`."""
