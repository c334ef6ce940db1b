"""The exit codes every `triton-guard` command shares."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
