"""`python -m importer DIR --users users.csv --orders orders.csv` (same as `beseda import-twilio`)."""

import sys

from .cli import run

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
