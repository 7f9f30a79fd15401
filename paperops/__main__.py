"""`python -m paperops ...`: the `paperops` command, for a process that has the interpreter but not the script."""
from paperops.cli import main

main()
