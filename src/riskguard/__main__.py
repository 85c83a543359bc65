"""``python -m riskguard`` runs the command line."""

from riskguard.cli import main

main()
