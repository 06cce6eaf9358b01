"""`python -m vitkit ...` (and so `torchrun -m vitkit train ...`) runs the `vitkit` command."""

from vitkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
