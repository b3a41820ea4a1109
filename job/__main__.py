"""`python -m job` is the `job` command."""

from job.cli import main

main()
