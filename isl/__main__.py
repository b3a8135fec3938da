"""`python -m isl COMMAND ...`, the same as the `isl` console script."""

from isl.cli import main

if __name__ == "__main__":
    main.main()
