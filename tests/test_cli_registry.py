"""cli/main.py's COMMANDS is the one list of subcommands: every cmd_*.py module is in it once, and
`photon-jax --help` offers exactly those commands in that order."""

from pathlib import Path

from photon_jax.cli import main

CLI_DIR = Path(main.__file__).resolve().parent


def test_every_command_module_is_registered_once():
    on_disk = sorted(f"photon_jax.cli.{path.stem}" for path in CLI_DIR.glob("cmd_*.py"))
    registered = [module.__name__ for module in main.COMMANDS]
    assert len(registered) == len(set(registered)), registered
    assert sorted(registered) == on_disk


def test_the_parser_offers_the_registered_commands_in_order():
    subparsers = next(a for a in main.build_parser()._actions if a.dest == "command")
    names = list(subparsers.choices)
    # each module registers the command its file is named after (cmd_import.py -> `import`)
    assert names == [module.__name__.rpartition(".cmd_")[2] for module in main.COMMANDS]
