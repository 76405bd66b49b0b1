"""`python -m clipshift`: the same command line as the `clipshift` script.

The Click group lives in cli.py, a top-level module beside the package (pyproject's
py-modules), so the script and this entry point run the very same commands.
"""

from cli import main

if __name__ == "__main__":
    main()
