"""One module per ``afmrl`` subcommand; standard-library imports only at top level."""
