"""``python -m lit_bioplaus`` is the ``lit-bioplaus`` command."""

from lit_bioplaus.cli import cli_main

if __name__ == "__main__":
    cli_main()
