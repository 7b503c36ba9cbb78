"""`python -m numpyvae ...` is the same as the `numpyvae` command."""
import sys

from .cli import main

sys.exit(main())
