"""Every `photon-jax` command the README and docs/ show in a shell block still parses: the subcommand
exists, every flag is one of its options and every value fits (choices, types). Parsing runs no command."""

import re
import shlex
from pathlib import Path

import pytest

from photon_jax.cli.main import build_parser
from photon_jax.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "launch" / "README.md"]
_BLOCK = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)


def logical_lines(block: str) -> list[tuple[int, str]]:
    """(offset of its first line, text) of each shell line, a line ending in a backslash joined to the next."""
    out, start, parts = [], 0, []
    for offset, line in enumerate(block.splitlines()):
        if not parts:
            start = offset
        parts.append(line.removesuffix("\\"))
        if not line.endswith("\\"):
            out.append((start, " ".join(parts)))
            parts = []
    return out + ([(start, " ".join(parts))] if parts else [])


def shown_commands() -> list[tuple[str, list[str]]]:
    """(page:line, argv after `photon-jax`) for every photon-jax command in a shell block."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for block in _BLOCK.finditer(text):
            first_line = text[: block.start(1)].count("\n") + 1
            for offset, line in logical_lines(block.group(1)):
                words = shlex.split(line, comments=True)
                starts = [i for i, w in enumerate(words) if w.endswith("photon-jax")]
                if not starts:
                    continue
                # a shell variable stands for a value the reader supplies: a number fits every option here
                argv = ["0" if w.startswith("$") else w for w in words[starts[0] + 1:]]
                for j, w in enumerate(argv):  # stop at the next command of a pipeline / list
                    if w in ("&&", "||", "|", ";"):
                        argv = argv[:j]
                        break
                out.append((f"{page.relative_to(ROOT)}:{first_line + offset}", argv))
    return out


COMMANDS = shown_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20
    assert {argv[0] for _, argv in COMMANDS if argv} >= {"run", "train", "eval", "bench", "params", "prepare"}


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_shown_command_parses(where, argv):
    if "--help" in argv or "-h" in argv:
        argv = [a for a in argv if a not in ("--help", "-h")]
    try:
        build_parser().parse_args(argv)
    except UserError as e:
        pytest.fail(f"{where}: photon-jax {' '.join(argv)}: {e}")


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_point_at_files_that_exist():
    broken = []
    for page in PAGES + [ROOT / "docs" / "README.md", ROOT / "experiments" / "results" / "REPORT.md"]:
        for target in _LINK.findall(page.read_text()):
            path = target.split("#", 1)[0]
            if not path or re.match(r"^[a-z]+:", path):
                continue
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)
