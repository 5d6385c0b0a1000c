"""`python -m caretrans ...` (also what torchrun runs: `torchrun -m caretrans train ...`)."""
from caretrans.cli import main

if __name__ == '__main__':
    raise SystemExit(main())
