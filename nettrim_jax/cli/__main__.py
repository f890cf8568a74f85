import sys

from nettrim_jax.cli.app import main

sys.exit(main())
