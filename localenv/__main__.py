"""`python -m localenv ...`: see localenv.cli."""

from localenv.cli import main

if __name__ == "__main__":
    main()
