"""``python -m ml_debugger`` runs the mldbg command line."""

from ml_debugger.cli.app import main

main()
