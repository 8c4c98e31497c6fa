"""`python -m opencharacter` runs the command line."""

from opencharacter.cli import main

main()
