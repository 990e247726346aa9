"""The CLI's subcommands, one module per area; `mabrouter.cli` wires them into one parser."""
