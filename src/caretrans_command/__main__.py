"""`python -m caretrans_command ...`: what the `caretrans` command runs."""
from caretrans_command import main

if __name__ == '__main__':
    raise SystemExit(main())
