"""The client commands of ``cvh``: each module adds its subcommands with ``add_parsers(commands, client)``."""
