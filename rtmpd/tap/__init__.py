"""One module per twistd subcommand: Options and makeService."""
