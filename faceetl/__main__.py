"""``python -m faceetl``: the command line (:mod:`faceetl.cli`)."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="faceetl")
