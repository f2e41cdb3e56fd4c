"""``python -m fanout`` and the ``fanout`` command: SIGINT and SIGTERM are handled before
anything else loads (a Ctrl-C while the command starts is a cancelled run and exit 130, never
a traceback from an import cut in half), then the command line runs."""

from __future__ import annotations


def main() -> None:
    """Console-script entry point."""
    from fanout.interrupt import install

    install()
    from fanout.cli import main as command_line

    command_line()


if __name__ == "__main__":
    main()
