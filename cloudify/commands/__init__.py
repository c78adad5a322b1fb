"""One module per subcommand: each declares its arguments (`add_parser`), validates them, and
calls the library (`handler(args, ctx) -> exit code`)."""
