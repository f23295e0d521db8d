"""CLI subcommands; each module has ``add_parser(subparsers)``. Only :mod:`dsanchor.cli` imports these."""
