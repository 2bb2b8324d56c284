"""``python -m iotfleet`` runs the command line."""

from iotfleet.cli import main

main()
